"""Dependencies: from a script's imports to locked, checked, installed distributions."""
