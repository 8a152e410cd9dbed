"""The first script to run with jhansi: where am I, who am I, what can I reach?"""

import os
import platform
import socket

print(f"Hello from Python {platform.python_version()} in a jhansi sandbox.")
print(f"user id: {os.getuid()}, home: {os.environ['HOME']}, working directory: {os.getcwd()}")  # noqa: PTH109
interfaces = sorted(name for _, name in socket.if_nameindex())
print(f"network interfaces: {', '.join(interfaces)}")
