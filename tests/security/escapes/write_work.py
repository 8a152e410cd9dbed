"""Escape if the read-only project, or the read-only root, can be written."""

import sys

for path in ("/work/pwned.txt", "/etc/pwned", "/usr/pwned", "/pwned"):
    try:
        with open(path, "w") as handle:
            handle.write("pwned")
        print("wrote", path)
        sys.exit(77)
    except OSError as exc:
        print("contained:", path, exc)
