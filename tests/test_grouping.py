"""``group_by``: one multivariate model per group of series, through the simPod and Infinity
contracts, on a real Prometheus holding groups that move together (see ``GroupedPrometheus``)."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.detection.detectors import DEFAULT_MODEL

from grafana_bodies import infinity_body, simpod_query
from vigil.pipeline.grouping import MAX_GROUP_SERIES, member_names

pytestmark = pytest.mark.real

VIEW_H = 12
MODES = ("softirq", "system", "user")


@pytest.fixture(scope="module")
def grouped_app(grouped_prometheus):
    from vigil.config import Settings
    from vigil.http.app import create_app

    return create_app(Settings().replace(prometheus={"url": grouped_prometheus.url, "request_timeout_s": 5.0}))


@pytest.fixture()
def gclient(grouped_app):
    return grouped_app.test_client()


def view(grouped):
    return grouped.end_ms - VIEW_H * 3600 * 1000, grouped.end_ms


def query(gclient, grouped, payload, **kw):
    start_ms, end_ms = view(grouped)
    body = simpod_query(start_ms, end_ms, [{"target": grouped.metric, "payload": payload}], **kw)
    response = gclient.post("/json/query", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def by_name(frame):
    return {f["name"]: f for f in frame["fields"]}


def member_frames(frames, instance):
    out = {}
    for frame in frames:
        value = by_name(frame).get("value")
        if value and value["labels"]["instance"] == instance:
            out[value["labels"]["mode"]] = by_name(frame)
    return out


def contributions_frame(frames, group):
    [frame] = [f for f in frames if f["name"] == f"{group} contributions"]
    return frame


def event_mask(times_ms, event):
    t = np.asarray(times_ms)
    return (t >= event[0]) & (t <= event[1])


def test_the_member_that_moved_against_the_others_is_flagged_and_named(gclient, grouped_prometheus):
    frames = query(gclient, grouped_prometheus, {"group_by": ["instance"]})
    odd = member_frames(frames, "odd")
    assert sorted(odd) == list(MODES)
    [event] = grouped_prometheus.events_ms["odd"]
    system = odd["system"]
    during = event_mask(system["time"]["values"], event)
    flagged = np.array(system["is_anomaly"]["values"], bool)
    assert flagged[during].mean() > 0.5, "the group anomaly was not flagged"
    # Every member carries the group's score and episodes, but its own band; and each one stayed
    # inside its own band: only the combination was unusual.
    for mode in MODES:
        f = odd[mode]
        assert f["anomaly_score"]["values"] == system["anomaly_score"]["values"]
        assert f["is_anomaly"]["values"] == system["is_anomaly"]["values"]
        values = np.array(f["value"]["values"], float)[during]
        assert np.all((values >= np.array(f["yhat_lower"]["values"], float)[during])
                      & (values <= np.array(f["yhat_upper"]["values"], float)[during])), mode
    assert np.nanmax(np.array(system["anomaly_score"]["values"], float)[during]) >= 1.0
    # The contributions frame says which member drove it.
    contributions = contributions_frame(frames, "instance=odd")
    assert contributions["meta"]["custom"]["group"] == "instance=odd"
    assert contributions["meta"]["custom"]["members"] == [f"mode={m}" for m in MODES]
    fields = contributions["fields"]
    assert fields[0]["name"] == "time" and fields[0]["values"] == system["time"]["values"]
    shares = {f["labels"]["mode"]: np.array(f["values"], float) for f in fields[1:]}
    assert all(f["name"] == "contribution" and f["config"]["unit"] == "percentunit" for f in fields[1:])
    assert fields[2]["config"]["displayNameFromDS"] == "instance=odd mode=system contribution"
    hot = during & flagged
    mean_share = {mode: float(np.nanmean(share[hot])) for mode, share in shares.items()}
    assert max(mean_share, key=mean_share.get) == "system", mean_share
    total = sum(shares.values())[hot]
    np.testing.assert_allclose(total[np.isfinite(total)], 1.0, atol=1e-6)


def test_per_series_models_do_not_see_what_the_group_model_sees(gclient, grouped_prometheus):
    frames = query(gclient, grouped_prometheus, {})
    [event] = grouped_prometheus.events_ms["odd"]
    odd = member_frames(frames, "odd")
    during = event_mask(odd["system"]["time"]["values"], event)
    for mode in MODES:
        scores = np.array(odd[mode]["anomaly_score"]["values"], float)[during]
        assert np.nanmax(scores) < 1.0, f"{mode} alone already looked anomalous: the planted case is not a group case"


def test_a_quiet_group_stays_quiet_and_a_group_of_one_keeps_its_own_model(gclient, grouped_prometheus):
    frames = query(gclient, grouped_prometheus, {"group_by": "instance"})
    calm = member_frames(frames, "calm")
    assert sorted(calm) == list(MODES)
    assert sum(calm["user"]["is_anomaly"]["values"]) <= 10  # 12 h of a quiet group: at most one short blip
    assert contributions_frame(frames, "instance=calm")["meta"]["custom"]["model"] == "group-iforest"
    solo = member_frames(frames, "solo")
    assert list(solo) == ["user"]
    solo_meta = next(f for f in frames if by_name(f).get("value", {}).get("labels", {}).get("instance") == "solo")
    # A group of one keeps its own per-series model: the query's (`auto`, the seasonal baseline).
    assert solo_meta["meta"]["custom"]["model"] == DEFAULT_MODEL and solo_meta["meta"]["custom"]["group"] == "instance=solo"
    notices = [n["text"] for n in frames[0]["meta"]["notices"]]
    assert any("1 group has one series only" in n for n in notices)


def test_annotations_are_group_episodes_naming_their_drivers(gclient, grouped_prometheus):
    frames = query(gclient, grouped_prometheus, {"group_by": ["instance"], "annotations": True})
    [frame] = frames
    f = by_name(frame)
    [event] = grouped_prometheus.events_ms["odd"]
    hits = [i for i, (a, b) in enumerate(zip(f["time"]["values"], f["timeEnd"]["values"]))
            if a <= event[1] and b >= event[0]]
    assert len(hits) == 1, "one group episode, not one per member"
    i = hits[0]
    assert {"anomaly", "group", "instance:odd"} <= set(f["tags"]["values"][i])
    assert f["title"]["values"][i] == "Anomaly: instance=odd"
    text = f["text"]["values"][i]
    assert text.startswith("instance=odd: unusual combination across 3 series")
    assert "driven by mode=system" in text
    assert not any("instance:calm" in tags for tags in f["tags"]["values"])


def test_group_models_are_cached(gclient, grouped_app, grouped_prometheus):
    cache = grouped_app.extensions["vigil.detection"].cache
    query(gclient, grouped_prometheus, {"group_by": ["instance"], "fields": ["anomaly_score"]})
    fitted, hits = len(cache), cache.hits
    frames = query(gclient, grouped_prometheus, {"group_by": ["instance"], "fields": ["anomaly_score"]})
    assert len(cache) == fitted, "a refresh trained new models"
    assert cache.hits >= hits + 3  # two groups and the group of one
    assert [fr["fields"][1]["name"] for fr in frames] == ["anomaly_score"] * 7  # no contributions asked for


def test_labels_no_series_has_make_one_group(gclient, grouped_prometheus):
    frames = query(gclient, grouped_prometheus, {"group_by": ["rack"], "fields": ["anomaly_score", "contributions"]})
    [contributions] = [f for f in frames if f["name"].endswith("contributions")]
    assert contributions["meta"]["custom"]["group"] == "rack="
    assert len(contributions["fields"]) == 1 + 7
    assert any("no series has the label rack" in n["text"] for n in frames[0]["meta"]["notices"])


@pytest.mark.parametrize("group_by", [5, ["1instance"], [""], {"instance": True}, ["instance", 3], "instance,,"])
def test_a_bad_group_by_is_a_400_naming_the_field(gclient, grouped_prometheus, group_by):
    start_ms, end_ms = view(grouped_prometheus)
    body = simpod_query(start_ms, end_ms, [{"refId": "G", "target": grouped_prometheus.metric,
                                            "payload": {"group_by": group_by}}])
    response = gclient.post("/json/query", json=body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] == "bad_group_by"
    assert error["message"].startswith(f"refId G (query '{grouped_prometheus.metric}'): payload.group_by must be "
                                       "a list of label names")


def test_a_group_too_large_is_a_400(gclient, grouped_prometheus):
    end_ms = grouped_prometheus.end_ms
    body = simpod_query(end_ms - 3600_000, end_ms, [{"target": grouped_prometheus.wide_metric,
                                                     "payload": {"group_by": ["instance"]}}])
    response = gclient.post("/json/query", json=body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] == "group_too_large"
    assert f"group instance=wide has 33 series; at most {MAX_GROUP_SERIES}" in error["message"]


def test_infinity_rows_carry_group_member_and_contribution(gclient, grouped_prometheus):
    start_ms, end_ms = view(grouped_prometheus)
    body = infinity_body(grouped_prometheus.metric, start_ms, end_ms, step="60s", group_by=["instance"],
                         only_anomalies=True)
    response = gclient.post("/api/v1/anomalies", data=body, content_type="text/plain")
    assert response.status_code == 200, response.get_json()
    rows = response.get_json()
    [event] = grouped_prometheus.events_ms["odd"]
    hot = [r for r in rows if event[0] <= r["time"] <= event[1]]
    assert hot and all(r["group"] == "instance=odd" and r["is_anomaly"] == 1 for r in hot)
    assert {r["member"] for r in hot} == {f"mode={m}" for m in MODES}
    assert {r["instance"] for r in rows} <= {"odd", "calm", "solo"}
    share: dict[str, list[float]] = {}
    for r in hot:
        assert 0.0 <= r["contribution"] <= 1.0 and r["model"] == "group-iforest"
        share.setdefault(r["mode"], []).append(r["contribution"])
    assert max(share, key=lambda m: np.mean(share[m])) == "system"
    # GET with query parameters, comma-separated, one row per member for alert rules.
    latest = gclient.get("/api/v1/anomalies", query_string={
        "query": grouped_prometheus.metric, "from": start_ms, "to": end_ms, "group_by": "instance", "latest": "true"})
    assert latest.status_code == 200
    keys = sorted((r["group"], r["series"]) for r in latest.get_json())
    assert keys == sorted([("instance=calm", f"instance=calm,job=vigil-group,mode={m}") for m in MODES]
                          + [("instance=odd", f"instance=odd,job=vigil-group,mode={m}") for m in MODES]
                          + [("instance=solo", "instance=solo,job=vigil-group,mode=user")])


def test_infinity_bad_group_by_names_the_field(gclient, grouped_prometheus):
    response = gclient.post("/api/v1/anomalies", data='{"query": "vigil_test_group_cpu", "group_by": [1]}',
                            content_type="text/plain")
    assert response.status_code == 400
    error = response.get_json()
    assert set(error) == {"error", "message", "trace_id"}
    assert "POST /api/v1/anomalies (query 'vigil_test_group_cpu'): group_by must be a list of label names" in error["message"]


def test_member_names_say_what_tells_members_apart():
    cpu = [{"__name__": "cpu", "instance": "a", "mode": m} for m in ("user", "system")]
    assert member_names(cpu, ["instance"]) == ["mode=user", "mode=system"]
    mixed = [{"__name__": n, "pod": "p"} for n in ("cpu", "memory", "restarts")]
    assert member_names(mixed, ["pod"]) == ["cpu", "memory", "restarts"]
    assert member_names(cpu, ["instance"], legend="{{mode}} CPU") == ["user CPU", "system CPU"]


def test_a_contributions_only_panel_gets_one_frame_per_group(gclient, grouped_prometheus):
    frames = query(gclient, grouped_prometheus, {"group_by": ["instance"], "fields": ["contributions"]})
    assert [f["name"] for f in frames] == [f"instance={i} contributions" for i in ("calm", "odd", "solo")]


def test_the_pipeline_refuses_a_group_by_that_is_not_label_names(grouped_prometheus):
    from vigil.config import Settings
    from vigil.errors import BadRequest
    from vigil.pipeline.core import Detection, Query
    from vigil.sources.prometheus import PrometheusClient

    settings = Settings().replace(prometheus={"url": grouped_prometheus.url})
    detection = Detection(settings, PrometheusClient.from_settings(settings.prometheus))
    end_ms = grouped_prometheus.end_ms
    with pytest.raises(BadRequest, match="group_by must be a list of label names"):
        detection.run(Query(expr=grouped_prometheus.metric, start_ms=end_ms - 3600_000, end_ms=end_ms, step_s=60,
                            group_by="instance"))  # type: ignore[arg-type]
