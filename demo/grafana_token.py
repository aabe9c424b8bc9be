"""Give the demo's Vigil worker a Grafana service-account token (the `grafana-token` one-shot).

The worker writes anomaly annotations through Grafana's HTTP API with a service-account token
(PROTOCOLS.md section 5). A fresh Grafana has none, so this script, run once after Grafana is
healthy, creates the service account ``vigil`` (role Editor: it may create annotations) if it is
missing, and a token for it if the token file is missing or no longer accepted, and writes the
token to ``$TOKEN_FILE`` for the worker (``VIGIL_GRAFANA_TOKEN_FILE``). It uses the admin
credentials from ``.env`` and nothing else; it never prints the token. Idempotent.

Environment: GRAFANA_URL, GRAFANA_ADMIN_USER, GRAFANA_ADMIN_PASSWORD, TOKEN_FILE.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REQUEST_TIMEOUT_S = 10.0
READY_DEADLINE_S = 180.0
ACCOUNT = "vigil"


def call(method: str, path: str, body: object | None = None, token: str | None = None) -> tuple[int, object]:
    url = os.environ.get("GRAFANA_URL", "http://grafana:3000").rstrip("/") + path
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    else:
        user = os.environ.get("GRAFANA_ADMIN_USER", "admin")
        password = os.environ["GRAFANA_ADMIN_PASSWORD"]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"null")
        except ValueError:
            return error.code, None


def wait_for_grafana() -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        try:
            status, _ = call("GET", "/api/serviceaccounts/search?perpage=1")
            if status == 200:
                return
            if status in (401, 403):
                sys.exit(f"grafana-token: Grafana refused the admin credentials ({status}); check .env")
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"grafana-token: Grafana did not answer within {READY_DEADLINE_S:.0f} s")
        time.sleep(2)


def main() -> int:
    token_file = Path(os.environ.get("TOKEN_FILE", "/var/lib/vigil/grafana-token"))
    wait_for_grafana()
    if token_file.exists():
        status, _ = call("GET", "/api/search?limit=1", token=token_file.read_text().strip())
        if status == 200:
            print(f"grafana-token: the token in {token_file} still works")
            return 0
    status, found = call("GET", f"/api/serviceaccounts/search?query={ACCOUNT}")
    accounts = [a for a in (found or {}).get("serviceAccounts", []) if a.get("name") == ACCOUNT]
    if accounts:
        account_id = accounts[0]["id"]
    else:
        status, created = call("POST", "/api/serviceaccounts", {"name": ACCOUNT, "role": "Editor"})
        if status not in (200, 201):
            sys.exit(f"grafana-token: cannot create service account ({status}): {created}")
        account_id = created["id"]
    status, token = call("POST", f"/api/serviceaccounts/{account_id}/tokens",
                         {"name": f"vigil-demo-{int(time.time())}"})
    if status not in (200, 201):
        sys.exit(f"grafana-token: cannot create a token ({status}): {token}")
    token_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = token_file.with_name(token_file.name + ".tmp")
    tmp.write_text(token["key"])
    tmp.chmod(0o600)
    tmp.replace(token_file)
    print(f"grafana-token: wrote a token for service account {ACCOUNT!r} to {token_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
