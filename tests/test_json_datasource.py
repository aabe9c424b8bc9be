"""The simPod JSON datasource contract, with the exact bodies Grafana sends, on real Prometheus data."""

from __future__ import annotations

import numpy as np
import pytest

from grafana_bodies import simpod_query

pytestmark = pytest.mark.real

VIEW_H = 12


def view(seeded):
    return seeded.end_ms - VIEW_H * 3600 * 1000, seeded.end_ms


def fields_by_name(frame):
    return {f["name"]: f for f in frame["fields"]}


def frame_for(frames, instance):
    for frame in frames:
        value = fields_by_name(frame).get("value")
        if value and value["labels"].get("instance") == instance:
            return frame
    raise AssertionError(f"no frame for {instance}")


def in_events(times_ms, events):
    mask = np.zeros(len(times_ms), bool)
    t = np.asarray(times_ms)
    for start, end in events:
        mask |= (t >= start) & (t <= end)
    return mask


def test_save_and_test_answers_200(client):
    assert client.get("/json").status_code == 200
    assert client.get("/json/").status_code == 200


def test_metrics_lists_presets_with_payload_fields(client):
    metrics = client.post("/json/metrics", json={}).get_json()
    values = {m["value"] for m in metrics}
    assert {"node_cpu_usage", "node_memory_usage", "pod_restarts", "pods_not_ready"} <= values
    payloads = {p["name"]: p for p in metrics[0]["payloads"]}
    assert {"model", "sensitivity", "train_window", "fields"} <= set(payloads)
    assert {o["value"] for o in payloads["model"]["options"]} == {"auto", "seasonal", "iforest", "ocsvm"}
    options = client.post("/json/metric-payload-options",
                          json={"metric": "node_cpu_usage", "payload": {}, "name": "sensitivity"}).get_json()
    assert [o["value"] for o in options] == ["low", "medium", "high"]


@pytest.mark.parametrize("model", ["auto", "seasonal", "iforest", "ocsvm"])
def test_query_flags_planted_anomalies_and_keeps_quiet_series_quiet(client, seeded_prometheus, model):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"target": seeded_prometheus.metric, "payload": {"model": model}}])
    response = client.post("/json/query", json=body)
    assert response.status_code == 200, response.get_json()
    frames = response.get_json()
    assert isinstance(frames, list) and len(frames) == 3
    spiky = fields_by_name(frame_for(frames, "spiky"))
    truth = in_events(spiky["time"]["values"], seeded_prometheus.events_ms["spiky"])
    flagged = np.array(spiky["is_anomaly"]["values"], bool)
    assert flagged[truth].any(), "the planted spike was not flagged"
    quiet = fields_by_name(frame_for(frames, "quiet"))
    # At most one short false episode in 12 h of a quiet series (~1 per week is the target).
    assert sum(quiet["is_anomaly"]["values"]) <= 10


def test_frame_shape_units_and_display_names(client, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"refId": "CPU", "target": seeded_prometheus.metric,
                                            "payload": {"legend": "{{instance}}"}}])
    frames = client.post("/json/query", json=body).get_json()
    frame = frame_for(frames, "spiky")
    assert frame["refId"] == "CPU"
    f = fields_by_name(frame)
    assert list(f) == ["time", "value", "yhat", "yhat_lower", "yhat_upper", "anomaly_score", "is_anomaly", "anomaly"]
    assert f["time"]["type"] == "time"
    times = f["time"]["values"]
    assert all(isinstance(t, int) for t in times) and times == sorted(times)
    assert start_ms <= times[0] and times[-1] <= end_ms
    assert len(times) == pytest.approx(VIEW_H * 60, abs=2)  # 12 h at the 60 s step Grafana asked for
    assert f["value"]["labels"] == {"__name__": "vigil_test_cpu", "instance": "spiky", "job": "vigil-test"}
    assert f["value"]["config"]["displayNameFromDS"] == "spiky"
    assert f["yhat_lower"]["config"]["displayNameFromDS"] == "spiky expected low"
    assert f["yhat_upper"]["config"]["custom"]["fillBelowTo"] == "spiky expected low"
    assert f["anomaly_score"]["config"]["thresholds"]["steps"][1] == {"color": "red", "value": 1.0}
    assert f["anomaly"]["config"]["custom"]["drawStyle"] == "points"
    values = np.array(f["value"]["values"], float)
    lower = np.array(f["yhat_lower"]["values"], float)
    upper = np.array(f["yhat_upper"]["values"], float)
    score = np.array(f["anomaly_score"]["values"], float)
    assert np.all(lower <= upper)
    # One vocabulary: outside the band <=> anomaly_score >= 1 (for the band-based score).
    outside = (values > upper) | (values < lower)
    assert np.all(score[outside] >= 1.0 - 1e-9)
    # The anomaly field holds the value exactly where is_anomaly is 1, null elsewhere.
    anomaly = f["anomaly"]["values"]
    for v, a, flag in zip(f["value"]["values"], anomaly, f["is_anomaly"]["values"]):
        assert (a == v) if flag else (a is None)


def test_fields_payload_limits_what_is_returned(client, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"target": seeded_prometheus.metric,
                                            "payload": {"fields": ["anomaly_score"]}}])
    frames = client.post("/json/query", json=body).get_json()
    assert [f["name"] for f in frames[0]["fields"]] == ["time", "anomaly_score"]


def test_annotation_query_returns_episodes_with_reasons(client, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"target": seeded_prometheus.metric, "payload": {"annotations": True}}])
    frames = client.post("/json/query", json=body).get_json()
    assert len(frames) == 1
    f = fields_by_name(frames[0])
    assert set(f) == {"time", "timeEnd", "title", "text", "tags"}
    spike_start, spike_end = seeded_prometheus.events_ms["spiky"][0]
    hits = [i for i, (a, b) in enumerate(zip(f["time"]["values"], f["timeEnd"]["values"]))
            if a <= spike_end and b >= spike_start and "instance:spiky" in f["tags"]["values"][i]]
    assert hits, "no annotation covers the planted spike"
    i = hits[0]
    assert "anomaly" in f["tags"]["values"][i]
    text = f["text"]["values"][i]
    assert "spiky" in text and "expected" in text and "usual range" in text
    assert f["timeEnd"]["values"][i] >= f["time"]["values"][i]


def test_hidden_and_empty_targets_are_skipped(client, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"target": seeded_prometheus.metric, "hide": True},
                                           {"refId": "B", "target": ""}])
    response = client.post("/json/query", json=body)
    assert response.status_code == 200 and response.get_json() == []


def test_query_with_no_series_is_200_without_data_and_says_why(client, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"target": "no_such_metric_anywhere"}])
    response = client.post("/json/query", json=body)
    assert response.status_code == 200
    frames = response.get_json()
    assert [f["fields"] for f in frames] == [[]]  # no data, only the notice Grafana shows on the panel
    (notice,) = frames[0]["meta"]["notices"]
    assert "no series matched no_such_metric_anywhere" in notice["text"]
    assert "Prometheus has no metric named no_such_metric_anywhere" in notice["text"]


def test_a_known_metric_without_samples_in_the_range_says_no_history_yet(client, seeded_prometheus):
    # A week before the seeded history began: the metric exists, but not then.
    end_ms = seeded_prometheus.start_ms - 7 * 86400_000
    body = simpod_query(end_ms - 3600_000, end_ms, [{"target": seeded_prometheus.metric}])
    frames = client.post("/json/query", json=body).get_json()
    (notice,) = frames[0]["meta"]["notices"]
    assert f"{seeded_prometheus.metric} exists but has no samples in this range yet" in notice["text"]


def test_relative_times_are_understood_like_on_the_infinity_endpoint(client, seeded_prometheus):
    body = simpod_query(0, 0, [{"target": seeded_prometheus.metric}])
    body["range"] = {"from": "now-2h", "to": "now"}
    response = client.post("/json/query", json=body)
    assert response.status_code == 200, response.get_json()
    assert any(f["fields"] for f in response.get_json())


def test_ad_hoc_filters_become_label_matchers(client, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"target": seeded_prometheus.metric}],
                        filters=[{"key": "instance", "operator": "=", "value": "quiet"}])
    frames = client.post("/json/query", json=body).get_json()
    assert [fields_by_name(f)["value"]["labels"]["instance"] for f in frames] == ["quiet"]


def test_variable_tag_keys_and_tag_values_come_from_prometheus(client, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    rng = simpod_query(start_ms, end_ms, [])["range"]
    values = client.post("/json/variable", json={"payload": {"label": "instance", "query": seeded_prometheus.metric},
                                                 "range": rng}).get_json()
    assert values == [{"__text": i, "__value": i} for i in ("quiet", "shifted", "spiky")]
    keys = client.post("/json/tag-keys", json={}).get_json()
    assert {"type": "string", "text": "instance"} in keys
    assert all(k["text"] != "__name__" for k in keys)
    tag_values = client.post("/json/tag-values", json={"key": "job"}).get_json()
    assert {"text": "vigil-test"} in tag_values


def test_refresh_reuses_fitted_models(client, service_app, seeded_prometheus):
    start_ms, end_ms = view(seeded_prometheus)
    body = simpod_query(start_ms, end_ms, [{"target": seeded_prometheus.metric, "payload": {"model": "ocsvm"}}])
    cache = service_app.extensions["vigil.detection"].cache
    client.post("/json/query", json=body)
    fitted = len(cache)
    hits = cache.hits
    client.post("/json/query", json=body)
    assert len(cache) == fitted, "a refresh trained new models"
    assert cache.hits >= hits + 3


def test_node_exporter_preset_end_to_end(client, seeded_prometheus):
    """The brief's minimal product: node CPU through the Prometheus API, scored, as frames."""
    import time

    end_ms = int(time.time() * 1000)
    body = simpod_query(end_ms - 600_000, end_ms, [{"target": "node_load1"}], interval_ms=15_000)
    response = client.post("/json/query", json=body)
    assert response.status_code == 200
    # node_exporter has only just been scraped: the series may have too little history to score,
    # or even no sample yet: either is a 200 with a notice saying so, never an error.
    for frame in response.get_json():
        if frame["fields"]:
            assert frame["fields"][0]["type"] == "time"
        else:
            assert "no series matched node_load1" in frame["meta"]["notices"][0]["text"]
