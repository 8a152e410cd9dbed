"""Escape if a host environment variable is visible."""

import os
import sys

for key, value in os.environ.items():
    if "jhansi-canary" in value or key == "JHANSI_ESCAPE_CANARY":
        print("saw", key)
        sys.exit(77)
print("environment:", sorted(os.environ))
