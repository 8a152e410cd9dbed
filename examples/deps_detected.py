"""Third-party imports, declared nowhere: jhansi finds, maps, locks and installs them.

`jhansi deps examples/deps_detected.py` shows each import, the package it became
and the evidence for it; `jhansi run` locks them into pylock.deps_detected.toml.
"""

import numpy as np
import requests
import yaml

config = yaml.safe_load("samples: [3, 1, 4, 1, 5, 9, 2, 6]\nurl: https://example.org/api\n")
values = np.array(config["samples"])
prepared = requests.Request("GET", config["url"], params={"n": len(values)}).prepare()
print(f"mean {values.mean():.3f}, std {values.std():.3f}")
print(f"would call {prepared.url} (no network in the sandbox)")
