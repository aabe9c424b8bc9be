"""Property-based fuzzing of every operation in ``openapi.json`` (small size; ``make fuzz`` runs
10,000 requests against a real ``vigil serve`` with load and faults, see ``bench/fuzz.py``).

The property: whatever arrives, the answer is never an unexpected 5xx, and every error answer is
JSON with a ``message``.
"""

from __future__ import annotations

import json
import os

import pytest

from bench.fuzz import FuzzRequest, Tally, load_openapi, operations, run_property
from grafana_bodies import simpod_query
from vigil.config import Settings
from vigil.http.app import create_app

pytestmark = pytest.mark.real

EXAMPLES = int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "400"))
TOKEN = "fuzz-small-token"


def test_every_openapi_operation_survives_generated_requests(seeded_prometheus, tmp_path):
    settings = Settings().replace(prometheus={"url": seeded_prometheus.url, "request_timeout_s": 5.0},
                                  server={"token": TOKEN, "threads": 64}, audit={"path": str(tmp_path / "a.db")})
    client = create_app(settings).test_client()
    end_ms = seeded_prometheus.end_ms
    valid = json.dumps(simpod_query(end_ms - 3600_000, end_ms, [{"target": seeded_prometheus.metric}])).encode()
    tally = Tally()
    seen: set[tuple[str, str]] = set()

    def send(request: FuzzRequest) -> tuple[int, bytes]:
        seen.add((request.method, request.operation))
        response = client.open(request.path, method=request.method, query_string=request.params,
                               headers=request.headers, data=request.body)
        return response.status_code, response.get_data()

    run_property(send, tally, examples=EXAMPLES, seed=14, token=TOKEN, valid_body=valid)
    assert tally.sent == EXAMPLES
    assert not tally.unexpected_5xx, "\n".join(tally.unexpected_5xx[:5])
    assert not tally.non_json_errors, "\n".join(tally.non_json_errors[:5])
    assert seen == {(m, p) for m, p, _ in operations(load_openapi())}  # every operation was exercised
    assert tally.statuses[200] > 0 and sum(v for k, v in tally.statuses.items() if 400 <= k < 500) > 0
