"""Runs in the sandbox: calls an HTTPS API with DEMO_TOKEN, which holds only a placeholder.

demo.py starts the API and runs this script through jhansi; the egress proxy puts the
real token in the Authorization header on its way to the API, and takes it out of the
answer on its way back.
"""

import json
import os
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
token = os.environ["DEMO_TOKEN"]
request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
try:
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        status, answer = response.status, json.load(response)
except urllib.error.HTTPError as refused:
    status, answer = refused.code, json.load(refused)

print(f"my DEMO_TOKEN: {token}")
print(f"the API answered {status}: {answer['message']}")
print(f"the API echoed my Authorization header: {answer['echo']}")
print(f"the echo holds my placeholder, not the token: {answer['echo'] == f'Bearer {token}'}")
sys.exit(0 if status == 200 else 1)
