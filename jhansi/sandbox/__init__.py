"""Sandboxes: the backends that run a script in isolation, and how to find them."""
