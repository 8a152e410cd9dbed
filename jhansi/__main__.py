"""``python -m jhansi``."""

from jhansi.cli import main

main()
