"""Escape if the read-only root can be written; /work's writes are reported (they must
land in the sandbox's layer, never in the project: the test checks the project)."""

import sys

try:
    with open("/work/pwned.txt", "w") as handle:
        handle.write("pwned")
    print("wrote /work/pwned.txt")
except OSError as exc:
    print("contained: /work/pwned.txt", exc)
for path in ("/etc/pwned", "/usr/pwned", "/pwned"):
    try:
        with open(path, "w") as handle:
            handle.write("pwned")
        print("wrote", path)
        sys.exit(77)
    except OSError as exc:
        print("contained:", path, exc)
