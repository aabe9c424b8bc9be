"""The Infinity contract: text/plain JSON bodies with filled-in macros, long rows out."""

from __future__ import annotations

import pytest

from grafana_bodies import infinity_body

pytestmark = pytest.mark.real

ROW_KEYS = {"time", "series", "value", "anomaly_score", "is_anomaly", "yhat", "yhat_lower", "yhat_upper", "model"}


def test_rows_from_a_text_plain_body(client, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    body = infinity_body(seeded_prometheus.metric, end_ms - 6 * 3600_000, end_ms, step="60s")
    response = client.post("/api/v1/anomalies", data=body, content_type="text/plain")
    assert response.status_code == 200, response.get_json()
    rows = response.get_json()
    assert len(rows) == 3 * 361
    row = rows[0]
    assert ROW_KEYS <= set(row)
    assert row["instance"] in ("quiet", "shifted", "spiky") and row["job"] == "vigil-test"
    assert row["series"].startswith("instance=")
    assert isinstance(row["time"], int) and row["is_anomaly"] in (0, 1)
    spiky = [r for r in rows if r["instance"] == "spiky" and r["is_anomaly"]]
    start, end = seeded_prometheus.events_ms["spiky"][0]
    assert any(start <= r["time"] <= end for r in spiky)


def test_latest_gives_one_row_per_series_for_alert_rules(client, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    body = infinity_body(seeded_prometheus.metric, end_ms - 3600_000, end_ms, latest=True)
    rows = client.post("/api/v1/anomalies", data=body, content_type="text/plain").get_json()
    assert sorted(r["instance"] for r in rows) == ["quiet", "shifted", "spiky"]
    assert all(r["time"] <= end_ms for r in rows)


def test_only_anomalies_and_get_with_query_parameters(client, seeded_prometheus):
    end_ms = seeded_prometheus.end_ms
    response = client.get("/api/v1/anomalies", query_string={
        "query": seeded_prometheus.metric, "from": end_ms - 6 * 3600_000, "to": end_ms, "only_anomalies": "true"})
    assert response.status_code == 200
    rows = response.get_json()
    assert rows and all(r["is_anomaly"] == 1 for r in rows)


def test_iso_and_relative_times_are_understood(client, seeded_prometheus):
    response = client.post("/api/v1/anomalies", data='{"query": "vigil_test_cpu", "from": "now-2h", "to": "now"}')
    assert response.status_code == 200


@pytest.mark.parametrize("body, status, needle", [
    ('{"query": "vigil_test_cpu", "from": 1, "to": 2, "colour": "red"}', 400, "unknown field 'colour'"),
    ('{"from": 1, "to": 2}', 400, "'query' is required"),
    ('{"query": "vigil_test_cpu", "model": "prophet"}', 400, "model must be one of"),
    ('{"query": "vigil_test_cpu", "step": "fast"}', 400, "step must be"),
    ('{"query": "vigil_test_cpu", "from": "yesterday"}', 400, "from must be"),
    ('{"query": "sum(rate("}', 422, "Prometheus rejected"),
    ('[1, 2]', 400, "must be a JSON object"),
    ('{"query": ', 400, "not valid JSON"),
])
def test_bad_input_gets_a_json_error_without_a_status_key(client, body, status, needle):
    response = client.post("/api/v1/anomalies", data=body, content_type="text/plain")
    assert response.status_code == status
    error = response.get_json()
    assert needle in error["message"]
    assert set(error) == {"error", "message", "trace_id"}  # never a string "status" (Infinity shows it)


def test_an_empty_answer_says_why_in_a_header(client, seeded_prometheus):
    response = client.post("/api/v1/anomalies", data='{"query": "node_cpu_usge", "from": "now-1h", "to": "now"}')
    assert response.status_code == 200 and response.get_json() == []
    notice = response.headers["X-Vigil-Notice"]
    assert "no series matched node_cpu_usge" in notice and "no metric named node_cpu_usge" in notice


def test_errors_name_the_query_not_an_internal_ref_id(client, seeded_prometheus):
    response = client.post("/api/v1/anomalies", data='{"query": "sum(rate(", "from": "now-1h"}')
    message = response.get_json()["message"]
    assert "query 'sum(rate('" in message
    assert "refId" not in message and "infinity" not in message
