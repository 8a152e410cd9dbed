"""A persistent counter: each named sandbox keeps its own home between runs.

    $ jhansi run -q --sandbox demo examples/counter.py     # 1
    $ jhansi run -q --sandbox demo examples/counter.py     # 2
    $ jhansi run -q --ephemeral examples/counter.py        # 1, every time

The count lives in ~/count, which is /home/sandbox/count inside the sandbox and
`jhansi sandbox ls` says where on the host.
"""

import os

path = os.path.join(os.environ["HOME"], "count")  # noqa: PTH118 - plain os for newcomers
try:
    with open(path) as handle:  # noqa: PTH123
        count = int(handle.read()) + 1
except FileNotFoundError:
    count = 1
with open(path, "w") as handle:  # noqa: PTH123
    handle.write(str(count))
print(count)
