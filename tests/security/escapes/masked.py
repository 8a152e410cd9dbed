"""Escape if a masked secret's content is visible."""

import os
import sys

for path in ("/work/.env", "/work/sub/id_rsa", "/work/.netrc"):
    try:
        with open(path) as handle:
            if "jhansi-canary" in handle.read():
                print("read", path)
                sys.exit(77)
    except OSError as exc:
        print("contained:", path, exc)
try:
    if os.listdir("/work/.git"):
        print("listed .git")
        sys.exit(77)
except OSError as exc:
    print("contained: .git", exc)
print("ok")
