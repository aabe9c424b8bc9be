"""The Alertmanager sink: one alert per anomaly episode through the v2 API.

Owns the alert's shape: labels ``alertname="VigilAnomaly"``, ``vigil_job``, ``vigil_episode``,
``severity``, the job's extra labels and the series labels (made valid Prometheus label names;
the series' own ``job``/``instance`` are kept as they are, ours is ``vigil_job``); annotations
``summary``, ``description`` (explanation, expected band, actual value), ``runbook_url`` (the
panel) and ``generatorURL``. An open episode is sent firing with ``endsAt`` a few re-send periods
ahead (so a dead worker's alerts resolve on their own, as Prometheus does); a closed one is sent
with ``endsAt`` = the episode's end, which resolves it at once.

Must not: decide when to send (that is ``outbox.py``), or retry by itself.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import requests

from vigil.store.audit import StoredEpisode
from vigil.config import AlertmanagerSettings, GrafanaSettings, JobSettings
from vigil.display import format_span, format_value, states_the_numbers
from vigil.errors import DeliveryError, DeliveryTimeout
from vigil.sinks.base import Delivered, Remember
from vigil.units import iso_from_ms

__all__ = ["AlertmanagerSink", "ALERT_NAME", "alert_labels", "panel_url", "describe", "DeliveryError"]

ALERT_NAME = "VigilAnomaly"
#: Labels we set; a series label of the same name is kept as ``series_<name>``.
_OURS = ("alertname", "vigil_job", "vigil_episode", "severity")
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_]")
#: How far around an episode the panel link shows.
_LINK_MARGIN_MS = 30 * 60 * 1000


def _label_name(name: str) -> str:
    if name == "__name__":
        return "metric"
    clean = _INVALID_CHARS.sub("_", name)
    if not clean or clean[0].isdigit():
        clean = "_" + clean
    if clean.startswith("__"):  # reserved for Prometheus' internal use
        clean = "series" + clean
    return clean


def alert_labels(episode: StoredEpisode, job: JobSettings | None) -> dict[str, str]:
    """The identifying labels of an episode's alert (series labels made valid, ours kept intact)."""
    labels: dict[str, str] = {}
    for name, value in sorted(episode.labels.items()):
        if value == "":
            continue
        clean = _label_name(name)
        if clean in _OURS:
            clean = f"series_{clean}"
        while clean in labels:
            clean = f"series_{clean}"
        labels[clean] = str(value)
    for name, value in sorted((job.labels if job else {}).items()):
        labels[_label_name(name)] = str(value)
    labels.update({"alertname": ALERT_NAME, "vigil_job": episode.job, "vigil_episode": episode.id,
                   "severity": episode.severity})
    return labels


def panel_url(grafana: GrafanaSettings, job: JobSettings | None, episode: StoredEpisode) -> str | None:
    """``<public url>/d/<uid>?viewPanel=<id>&from=..&to=..`` around the episode, or Grafana's home."""
    base = (grafana.public_url or grafana.url or "").rstrip("/")
    if not base:
        return None
    if job is None or not job.dashboard_uid:
        return base + "/"
    end = episode.end_ms if episode.end_ms is not None else episode.last_ms
    params: dict[str, Any] = {}
    if job.panel_id is not None:
        params["viewPanel"] = job.panel_id
    params["from"] = episode.start_ms - _LINK_MARGIN_MS
    params["to"] = end + _LINK_MARGIN_MS
    return f"{base}/d/{job.dashboard_uid}?{urlencode(params)}"


def describe(episode: StoredEpisode) -> str:
    """The alert's text: the reason, the numbers only where the reason does not already say them, when."""
    when = format_span(episode.start_ms, episode.end_ms, ended=True)
    if states_the_numbers(episode.reason, episode.peak_value, episode.unit):
        return (f"{episode.reason}. Series {episode.series_key or '(no labels)'}; {when}. Episode {episode.id}.")
    band = (f"expected {format_value(episode.yhat, episode.unit)} in [{format_value(episode.yhat_lower, episode.unit)}, "
            f"{format_value(episode.yhat_upper, episode.unit)}]")
    return (f"{episode.reason or 'Values outside the expected band'}. Actual {format_value(episode.peak_value, episode.unit)} "
            f"at {iso_from_ms(episode.peak_ms)}, {band}; anomaly score {episode.peak_score:.2f} (1.0 is the threshold). "
            f"Series {episode.series_key or '(no labels)'}; model {episode.model or 'n/a'}; {when}. "
            f"Episode {episode.id}.")



class AlertmanagerSink:
    """Posts alerts to one Alertmanager (``POST /api/v2/alerts``)."""

    name = "alertmanager"

    def __init__(self, settings: AlertmanagerSettings, grafana: GrafanaSettings | None = None, *,
                 session: requests.Session | None = None) -> None:
        if not settings.url:
            raise ValueError("The 'url' parameter of AlertmanagerSink must be set. Got None instead.")
        self.settings = settings
        self.grafana = grafana or GrafanaSettings()
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"AlertmanagerSink(url={self.settings.url!r})"

    @property
    def request_timeout_s(self) -> float:
        return self.settings.request_timeout_s

    def deliver(self, episode: StoredEpisode, job: JobSettings | None, now_ms: int,
                remember: Remember) -> Delivered:
        """Send the alert; the state Alertmanager now holds is stored with the delivery."""
        state = self.send(episode, job, now_ms)
        action = {"firing": "resent" if episode.alert_state == "firing" else "fired"}.get(state, "resolved")
        return Delivered(action, {"alert_state": state}, {"alert_state": state, "alert_sent_ms": now_ms})

    def alert(self, episode: StoredEpisode, job: JobSettings | None, now_ms: int) -> dict[str, Any]:
        """The v2 alert object for the episode's current state."""
        link = panel_url(self.grafana, job, episode)
        annotations = {
            "summary": f"Anomaly in {episode.job}: {episode.series_key or '(no labels)'}",
            "description": describe(episode),
            "anomaly_score": f"{episode.peak_score:.2f}",
        }
        if job is not None and "__name__" not in episode.labels:
            # A rate() or an aggregation drops the metric name: without the query the alert
            # would not say what was measured.
            annotations["query"] = job.query
            annotations["description"] += f" Query: {job.query}"
        if link and job is not None and job.dashboard_uid:
            annotations["description"] += f" Panel: {link}"
        if link:
            annotations["runbook_url"] = link
            annotations["dashboard_url"] = link
        if episode.end_ms is None:
            ends_ms = now_ms + int(4 * self.settings.resend_every_s * 1000)
        else:
            ends_ms = max(int(episode.end_ms), int(episode.start_ms) + 1)
        alert: dict[str, Any] = {
            "labels": alert_labels(episode, job),
            "annotations": annotations,
            "startsAt": iso_from_ms(episode.start_ms),
            "endsAt": iso_from_ms(ends_ms),
        }
        if link:
            alert["generatorURL"] = link
        return alert

    def send(self, episode: StoredEpisode, job: JobSettings | None, now_ms: int) -> str:
        """POST the alert; returns the state Alertmanager now holds: ``firing`` or ``resolved``."""
        body = [self.alert(episode, job, now_ms)]
        url = self.settings.url.rstrip("/") + "/api/v2/alerts"  # type: ignore[union-attr]
        try:
            response = self.session.post(url, json=body, timeout=self.settings.request_timeout_s)
        except requests.Timeout:
            raise DeliveryTimeout(f"alertmanager did not answer within {self.settings.request_timeout_s:g}s") from None
        except requests.RequestException as exc:
            raise DeliveryError(f"alertmanager unreachable: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise DeliveryError(f"alertmanager answered {response.status_code}: {response.text[:200]}")
        return "firing" if episode.end_ms is None else "resolved"
