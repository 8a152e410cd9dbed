"""Escape if the script outlives its timeout."""

import sys
import time

time.sleep(float(sys.argv[1]))
print("still running")
sys.exit(77)
