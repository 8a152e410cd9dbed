# /// script
# requires-python = ">=3.9"
# dependencies = ["requests==2.19.1"]
# ///
"""A pin with a known vulnerability: jhansi's policy refuses it before anything runs.

requests 2.19.1 sends the Authorization header on to the new host when a redirect
goes from https to http (PYSEC-2018-28, CVE-2018-18074; fixed in 2.20.0). With the
offline OSV records kept in this repository:

    $ jhansi run --advisory-db tests/fixtures/advisory-database examples/vulnerable.py

exits 3, naming PYSEC-2018-28 and the other advisories of the locked packages; nothing
is installed and no sandbox starts. The refusal is in the ledger (`jhansi ledger log`).
"""

import requests

print(f"requests {requests.__version__} ran: the policy should have stopped this")
