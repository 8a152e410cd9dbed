"""jhansi: run AI-generated Python locked, checked, sandboxed and recorded.

Importing this package is cheap on purpose: heavy dependencies (the docker SDK,
cyclonedx, keyring, cryptography, pip-audit) are imported only on the code paths
that need them.
"""

from jhansi._version import __version__

__all__ = ["__version__"]
