"""The execution ledger: an append-only, hash-chained, signed record of every run.

- :mod:`~jhansi.ledger.record` — the record schema, canonical bytes and hashes
- :mod:`~jhansi.ledger.store` — appending (locking, fsync, torn writes, preflight)
- :mod:`~jhansi.ledger.layout` — which directory, and the files it holds
- :mod:`~jhansi.ledger.tail` — the end of the ledger: its last record, torn writes
- :mod:`~jhansi.ledger.keyguard` — the signing key as the appender uses it
- :mod:`~jhansi.ledger.blobs` — the content-addressed blob store
- :mod:`~jhansi.ledger.checkpoint` — signed checkpoints and the head (why truncation shows)
- :mod:`~jhansi.ledger.verify` — ``jhansi ledger verify`` (stage one in
  :mod:`~jhansi.ledger.scan`; what it reports in :mod:`~jhansi.ledger.findings`)
- :mod:`~jhansi.ledger.read` — runs for ``log`` and ``show``; ``export``
- :mod:`~jhansi.ledger.identity` — who ran it (user, host, CI claims)

Nothing here imports ``cryptography`` until a signature is made or checked.
"""
