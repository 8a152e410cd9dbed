"""Egress: the host-side proxy, its per-run CA, the host policy and the secret store."""
