# /// script
# requires-python = ">=3.9"
# dependencies = ["PyYAML>=6"]
# ///
"""A script that says what it needs (PEP 723): the block is authoritative."""

import yaml

print(yaml.safe_dump({"declared": True, "by": "PEP 723"}, sort_keys=False), end="")
