"""Answers no bigger than asked: compact JSON, only the requested fields, gzip when accepted; and
probes that answer while a panel query is busy. Through the real Flask app, scored from a
:class:`FakeSource` (no Prometheus needed)."""

from __future__ import annotations

import gzip
import json
import threading
import time

import pytest

from fakesource import FakeSource, synthetic_series
from realstack import wait_for
from vigil.config import Settings
from vigil.pipeline.frames import to_dataframes
from vigil.http.app import create_app
from vigil.http.encoding import accepts_gzip
from vigil.pipeline.core import Detection, Query

STEP_MS = 60_000


@pytest.fixture(scope="module")
def end_ms() -> int:
    return (int(time.time() * 1000) // STEP_MS - 60) * STEP_MS


@pytest.fixture(scope="module")
def source(end_ms) -> FakeSource:
    return FakeSource(synthetic_series(3, end_ms, days=2.0, spike_every=2))


@pytest.fixture(scope="module")
def app(source):
    settings = Settings()
    return create_app(settings, detection=Detection(settings, source))


def body(end_ms: int, **payload) -> dict:
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000))  # noqa: E731
    return {"range": {"from": iso(end_ms - 3 * 3600_000), "to": iso(end_ms)}, "intervalMs": 60_000,
            "maxDataPoints": 1000, "targets": [{"refId": "A", "target": "m", "payload": payload}]}


def test_gzip_when_accepted_and_the_same_json_when_not(app, end_ms):
    client = app.test_client()
    zipped = client.post("/json/query", json=body(end_ms), headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.status_code == 200
    assert zipped.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in zipped.headers["Vary"]
    plain = client.post("/json/query", json=body(end_ms))
    assert "Content-Encoding" not in plain.headers
    raw = gzip.decompress(zipped.data)
    assert len(zipped.data) * 2 < len(raw), "gzip should halve a panel's answer at least"
    assert json.loads(raw) == json.loads(plain.data)
    refused = client.post("/json/query", json=body(end_ms), headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers


def test_the_answer_is_compact_json_with_only_the_fields_asked_for(app, end_ms):
    r = app.test_client().post("/json/query", json=body(end_ms, fields=["anomaly_score"]))
    assert r.data.startswith(b'[{"name":') and b'": ' not in r.data and b'", "' not in r.data
    frames = r.get_json()
    assert len(frames) == 3
    assert all([f["name"] for f in frame["fields"]] == ["time", "anomaly_score"] for frame in frames)


def test_the_fast_encoder_writes_what_the_list_encoder_wrote(app, end_ms, source):
    """numpy arrays through orjson: the same numbers, NaN and infinities as null, as json_values."""
    frames = app.test_client().post("/json/query", json=body(end_ms)).get_json()
    detection = app.extensions["vigil.detection"]
    start_ms = end_ms - 3 * 3600_000
    result = detection.run(Query(expr="m", start_ms=start_ms, end_ms=end_ms, step_s=60))
    assert frames == json.loads(json.dumps(to_dataframes(result, "A"), allow_nan=False))
    anomalies = [v for frame in frames for f in frame["fields"] if f["name"] == "anomaly" for v in f["values"]]
    assert None in anomalies and any(v is not None for v in anomalies)


def test_errors_are_still_json(app, end_ms):
    r = app.test_client().post("/json/query", json=body(end_ms, model="prophet"),
                               headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 400 and r.get_json()["error"] == "unknown_model"


def test_healthz_answers_while_a_panel_waits_on_its_source(end_ms):
    source = FakeSource(synthetic_series(2, end_ms, days=1.0))
    settings = Settings()
    app = create_app(settings, detection=Detection(settings, source))
    source.release = threading.Event()
    answers: list[int] = []
    panel = threading.Thread(target=lambda: answers.append(
        app.test_client().post("/json/query", json=body(end_ms)).status_code))
    panel.start()
    try:
        wait_for(lambda: source.waiting >= 1, deadline_s=10, what="the panel query reaching its source")
        t0 = time.monotonic()
        assert app.test_client().get("/healthz").status_code == 200
        assert time.monotonic() - t0 < 1.0
        assert not answers, "the panel answered before its source did"
    finally:
        source.release.set()
        panel.join(timeout=60)
    assert answers == [200]


@pytest.mark.parametrize("header, accepted", [("gzip", True), ("br, gzip;q=0.5", True), ("*", True),
                                              ("gzip;q=0", False), ("identity", False), ("", False)])
def test_accept_encoding(header, accepted):
    assert accepts_gzip(header) is accepted
