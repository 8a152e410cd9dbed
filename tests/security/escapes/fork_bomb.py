"""Escape if more processes than the limit (argv[1]) can exist at once.

Bounded: it stops trying at four times the limit, so a broken sandbox does not
take the machine down with it.
"""

import os
import sys
import time

limit = int(sys.argv[1])
children = []
try:
    for _ in range(limit * 4):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print("fork refused after", len(children), exc)
finally:
    for pid in children:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
print("children:", len(children))
sys.exit(77 if len(children) >= limit else 0)
