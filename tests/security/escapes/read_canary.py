"""Escape if a file outside every mount (passed as argv[1]) can be read."""

import sys

for path in sys.argv[1:]:
    try:
        with open(path) as handle:
            if "jhansi-canary" in handle.read():
                print("read", path)
                sys.exit(77)
    except OSError as exc:
        print("contained:", path, exc)
