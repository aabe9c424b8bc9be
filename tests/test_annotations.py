"""The Grafana sink against a recording server that speaks Grafana's annotations API."""

from __future__ import annotations

import logging

import pytest

from grafana_recorder import GrafanaRecorder
from realstack import wait_for
from vigil.sinks.annotations import GrafanaSink, annotation_tags, annotation_text
from vigil.store.audit import AuditStore
from vigil.config import GrafanaSettings, JobSettings, Secret
from vigil.worker.outbox import Outbox

NOW_MS = 1_735_711_200_000
TOKEN = "glsa_test_secret_token"


@pytest.fixture
def grafana():
    with GrafanaRecorder(TOKEN) as recorder:
        yield recorder


def _sink(recorder, timeout_s=5.0):
    return GrafanaSink(GrafanaSettings(url=recorder.url, token=Secret(TOKEN), request_timeout_s=timeout_s))


def _store_with_episode(tmp_path, **overrides):
    store = AuditStore(tmp_path / "audit.db")
    values = {"job": "node-cpu", "series_key": "instance=web-1,job=node", "labels": {"instance": "web-1", "job": "node"},
              "start_ms": NOW_MS - 600_000, "end_ms": None, "last_ms": NOW_MS - 60_000, "peak_ms": NOW_MS - 300_000,
              "peak_score": 2.4, "peak_value": 0.97, "yhat": 0.31, "yhat_lower": 0.22, "yhat_upper": 0.41,
              "reason": "CPU 0.97 is far above the usual 0.31 for this hour", "model": "iforest", **overrides}
    with store.transaction() as db:
        episode_id = store.insert_episode(db, values, NOW_MS)
        store.enqueue(db, episode_id, "grafana", NOW_MS)
    return store, episode_id


def _outbox(store, recorder, job=None, timeout_s=5.0):
    jobs = {"node-cpu": job} if job else {}
    return Outbox(store, {"grafana": _sink(recorder, timeout_s)}, jobs=jobs, base_backoff_s=0.05, max_backoff_s=0.2)


def test_region_annotation_on_the_panel_then_extended_and_closed(tmp_path, grafana):
    job = JobSettings(name="node-cpu", query="node_cpu", dashboard_uid="vigil-overview", panel_id=4,
                      labels={"team": "infra"})
    store, episode_id = _store_with_episode(tmp_path)
    outbox = _outbox(store, grafana, job)
    assert outbox.drain(10)
    [created] = grafana.creates()
    body = created["body"]
    assert created["authorization"] == f"Bearer {TOKEN}"
    assert body["dashboardUID"] == "vigil-overview" and body["panelId"] == 4
    assert body["time"] == NOW_MS - 600_000 and body["timeEnd"] == NOW_MS - 60_000  # epoch ms, a region
    assert {"anomaly", "node-cpu", "instance:web-1", "job:node", "team:infra", f"vigil_episode:{episode_id}"} <= set(body["tags"])
    assert "far above the usual" in body["text"] and "2.40" in body["text"] and "[0.22, 0.41]" in body["text"]
    assert "iforest" in body["text"]
    assert store.episode(episode_id).annotation_id == 1

    # The episode goes on, then ends: the same annotation is PATCHed, never a second one.
    for values in ({"last_ms": NOW_MS}, {"end_ms": NOW_MS + 60_000, "last_ms": NOW_MS + 60_000}):
        with store.transaction() as db:
            store.update_episode(db, episode_id, values, NOW_MS)
            store.enqueue(db, episode_id, "grafana", NOW_MS)
        assert outbox.drain(10)
    assert len(grafana.annotations) == 1 and len(grafana.creates()) == 1
    annotation = grafana.annotations[1]
    assert annotation["timeEnd"] == NOW_MS + 60_000 and annotation["patches"] == 2
    assert f"vigil_episode:{episode_id}" in annotation["tags"]  # a PATCH never wipes the tags
    assert "ended" in annotation["text"]
    assert grafana.rejections == []
    kinds = [e["kind"] for e in store.events(episode_id=episode_id)]
    assert kinds.count("annotation_created") == 1 and kinds.count("delivered") == 3


def test_organisation_wide_without_a_dashboard(tmp_path, grafana):
    store, _ = _store_with_episode(tmp_path)
    assert _outbox(store, grafana).drain(10)
    body = grafana.creates()[0]["body"]
    assert "dashboardUID" not in body and body["panelId"] is None


def test_grafana_503_is_retried_until_it_succeeds(tmp_path, grafana):
    store, episode_id = _store_with_episode(tmp_path)
    grafana.fail_next(4, 503)
    outbox = _outbox(store, grafana)
    assert outbox.drain(15)
    assert len(grafana.annotations) == 1
    failures = [e for e in store.events(episode_id=episode_id) if e["kind"] == "delivery_failed"]
    assert len(failures) >= 2 and "503" in failures[0]["detail"]["error"]


def test_grafana_timeout_makes_no_second_annotation(tmp_path, grafana):
    """Grafana creates the annotation but answers after our timeout: the retry finds it by its tag."""
    store, episode_id = _store_with_episode(tmp_path)
    grafana.hang_next(1, 1.0, method="POST")
    outbox = Outbox(store, {"grafana": _sink(grafana, 0.5)}, base_backoff_s=0.05, max_backoff_s=5)
    assert outbox.drain(15)
    assert len(grafana.annotations) == 1 and len(grafana.creates()) == 1
    kinds = [e["kind"] for e in store.events(episode_id=episode_id)]
    assert "delivery_failed" in kinds and "annotation_recovered" in kinds
    [failure] = [e["detail"] for e in store.events(episode_id=episode_id) if e["kind"] == "delivery_failed"]
    # Known as a timeout by its type: the retry waited 3 x the 0.5 s timeout for Grafana to finish.
    assert failure["error"].startswith("DeliveryTimeout: grafana did not answer within 0.5s")
    assert failure["retry_in_s"] >= 1.5


def test_grafana_finishing_very_late_leaves_one_annotation_once_the_episode_ends(tmp_path, grafana):
    """A create that completes long after the retry made another: the final update removes the extra."""
    store, episode_id = _store_with_episode(tmp_path)
    grafana.hang_next(1, 2.0, method="POST")
    outbox = Outbox(store, {"grafana": _sink(grafana, 0.2)}, base_backoff_s=0.05, max_backoff_s=0.6)
    assert outbox.drain(15)
    # The hung create lands a little later.
    wait_for(lambda: len(grafana.annotations) == 2 and not grafana.hanging(), deadline_s=15,
             what="the hung create to land")
    with store.transaction() as db:
        store.update_episode(db, episode_id, {"end_ms": NOW_MS, "last_ms": NOW_MS}, NOW_MS)
        store.enqueue(db, episode_id, "grafana", NOW_MS)
    assert outbox.drain(10)
    [kept] = grafana.annotations.values()
    assert kept["id"] == store.episode(episode_id).annotation_id and kept["timeEnd"] == NOW_MS
    assert len(grafana.deleted) == 1


def test_lost_answer_after_create_is_recovered_by_tag(tmp_path, grafana):
    store, episode_id = _store_with_episode(tmp_path)
    grafana.lose_next_answer(1)  # Grafana stored it, the 200 never reached us
    assert _outbox(store, grafana).drain(15)
    assert len(grafana.annotations) == 1
    assert store.episode(episode_id).annotation_id == 1
    assert "annotation_recovered" in [e["kind"] for e in store.events(episode_id=episode_id)]


def test_bad_token_is_retried_and_never_logged(tmp_path, grafana, caplog):
    store, episode_id = _store_with_episode(tmp_path)
    grafana.token = "another"
    caplog.set_level(logging.DEBUG)
    outbox = _outbox(store, grafana)
    assert not outbox.drain(0.5)
    assert grafana.annotations == {}
    assert TOKEN not in caplog.text and TOKEN not in repr(_sink(grafana))
    assert all(TOKEN not in str(e) for e in store.events())
    grafana.token = TOKEN  # fixed by the operator: the backlog drains
    assert outbox.drain(10) and len(grafana.annotations) == 1


def test_tags_and_text_are_stable(tmp_path):
    store, episode_id = _store_with_episode(tmp_path)
    episode = store.episode(episode_id)
    assert annotation_tags(episode)[:2] == ["anomaly", "node-cpu"]
    assert annotation_tags(episode)[-1] == f"vigil_episode:{episode_id}"
    assert annotation_text(episode).splitlines()[0] == "Anomaly in node-cpu: instance=web-1,job=node"


# -- Grafana 12+/13: the annotation.grafana.app API, discovered, with the legacy API as fallback -----

APP = "/apis/annotation.grafana.app/v0alpha1"


def _pairs(recorder):
    return [(r["method"], r["path"], r["status"]) for r in recorder.requests]


def test_new_annotations_api_is_used_when_grafana_offers_it(tmp_path):
    job = JobSettings(name="node-cpu", query="node_cpu", dashboard_uid="vigil-overview", panel_id=4)
    with GrafanaRecorder(TOKEN, app_api=True) as grafana:
        store, episode_id = _store_with_episode(tmp_path)
        outbox = _outbox(store, grafana, job)
        assert outbox.drain(10)
        name = f"vigil-{episode_id}"
        collection = f"{APP}/namespaces/default/annotations"
        assert _pairs(grafana) == [("GET", APP, 200), ("GET", f"{collection}/{name}", 404),
                                   ("POST", collection, 201)]
        created = grafana.requests[-1]
        assert created["authorization"] == f"Bearer {TOKEN}"
        assert created["body"]["apiVersion"] == "annotation.grafana.app/v0alpha1"
        assert created["body"]["kind"] == "Annotation" and created["body"]["metadata"] == {"name": name}
        spec = created["body"]["spec"]
        assert spec["dashboardUID"] == "vigil-overview" and spec["panelID"] == 4  # the dashboard by uid
        assert spec["time"] == NOW_MS - 600_000 and spec["timeEnd"] == NOW_MS - 60_000
        assert f"vigil_episode:{episode_id}" in spec["tags"] and "far above the usual" in spec["text"]
        assert created["answer"]["metadata"]["name"] == name
        assert store.episode(episode_id).annotation_id == name
        assert grafana.rejections == []

        # The episode ends: a merge-patch of the same object, never a second one, never the legacy API.
        with store.transaction() as db:
            store.update_episode(db, episode_id, {"end_ms": NOW_MS, "last_ms": NOW_MS}, NOW_MS)
            store.enqueue(db, episode_id, "grafana", NOW_MS)
        assert outbox.drain(10)
        patch = grafana.requests[-1]
        assert (patch["method"], patch["path"], patch["status"]) == ("PATCH", f"{collection}/{name}", 200)
        assert patch["content_type"] == "application/merge-patch+json"
        assert patch["body"]["spec"]["timeEnd"] == NOW_MS and "ended" in patch["body"]["spec"]["text"]
        assert len(grafana.annotations) == 1 and not any(r["path"].startswith("/api/") for r in grafana.requests)
        assert sum(1 for r in grafana.requests if r["path"] == APP) == 1  # discovered once


def test_new_api_create_whose_answer_was_lost_is_found_by_name(tmp_path):
    with GrafanaRecorder(TOKEN, app_api=True) as grafana:
        store, episode_id = _store_with_episode(tmp_path)
        grafana.lose_next_answer(1)  # Grafana stored it, the 201 never reached us
        assert _outbox(store, grafana).drain(15)
        assert len(grafana.annotations) == 1
        assert store.episode(episode_id).annotation_id == f"vigil-{episode_id}"
        assert "annotation_recovered" in [e["kind"] for e in store.events(episode_id=episode_id)]


def test_legacy_api_when_grafana_does_not_offer_the_new_one(tmp_path, grafana):
    store, episode_id = _store_with_episode(tmp_path)
    assert _outbox(store, grafana).drain(10)
    assert _pairs(grafana) == [("GET", APP, 404), ("GET", "/api/annotations", 200), ("POST", "/api/annotations", 200)]
    assert grafana.requests[-1]["answer"] == {"message": "Annotation added", "id": 1}
    assert store.episode(episode_id).annotation_id == 1


def test_discovery_is_asked_again_after_a_grafana_error(tmp_path):
    with GrafanaRecorder(TOKEN, app_api=True) as grafana:
        sink = _sink(grafana)
        grafana.fail_next(1, 503, method="GET")
        assert sink.uses_app_api() is False  # unsure: the legacy API for this attempt
        assert sink.uses_app_api() is True
        assert sink.uses_app_api() is True
        assert [r["status"] for r in grafana.requests] == [503, 200]


def test_an_annotation_made_on_the_legacy_api_is_finished_there_after_grafana_upgrades(tmp_path, grafana):
    store, episode_id = _store_with_episode(tmp_path)
    assert _outbox(store, grafana).drain(10)
    assert store.episode(episode_id).annotation_id == 1
    grafana.app_api = True  # Grafana upgraded; the worker restarted (a new sink discovers again)
    with store.transaction() as db:
        store.update_episode(db, episode_id, {"end_ms": NOW_MS, "last_ms": NOW_MS}, NOW_MS)
        store.enqueue(db, episode_id, "grafana", NOW_MS)
    assert _outbox(store, grafana).drain(10)
    assert [(r["method"], r["path"]) for r in grafana.requests[-2:]] == [("PATCH", "/api/annotations/1"),
                                                                       ("GET", "/api/annotations")]
    assert len(grafana.annotations) == 1 and grafana.annotations[1]["timeEnd"] == NOW_MS
    assert grafana.deleted == [] and grafana.rejections == []
