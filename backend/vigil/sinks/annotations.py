"""The Grafana sink: one region annotation per anomaly episode, through ``grafana-client``.

Owns the annotation's shape (region ``time``/``timeEnd`` in epoch ms, tags, text) and the
idempotent create: every annotation carries the tag ``vigil_episode:<episode id>`` and, before
creating one, the sink looks for an existing annotation with that tag. A worker killed between
Grafana's 200 and our commit of the id therefore never makes a second annotation.

Grafana 12+ may offer the new ``annotation.grafana.app`` API (``annotation_api.py``): the sink
asks once whether it does and then writes there, addressing dashboards by uid, with the
annotation's name (``vigil-<episode id>``) as its idempotence key; otherwise, or while Grafana
cannot say, it writes through the legacy ``/api/annotations``. An annotation id is an ``int`` on
the legacy API and the object's name (``str``) on the new one, so an update goes where the
annotation was made.

Must not: decide when to deliver (that is ``outbox.py``) or log the token (it lives in a
``Secret`` and in the client's auth object only).
"""

from __future__ import annotations

from typing import Any

from vigil.sinks.annotation_api import AppAnnotations, annotation_name
from vigil.store.audit import StoredEpisode
from vigil.config import GrafanaSettings, JobSettings
from vigil.display import format_span, format_value, states_the_numbers
from vigil.errors import DeliveryTimeout
from vigil.sinks.base import Delivered, Remember
from vigil.units import iso_from_ms

__all__ = ["GrafanaSink", "annotation_tags", "annotation_text", "episode_tag"]

#: Tag prefix that makes an annotation findable by episode.
EPISODE_TAG = "vigil_episode"


def episode_tag(episode_id: str) -> str:
    return f"{EPISODE_TAG}:{episode_id}"


def annotation_tags(episode: StoredEpisode, job: JobSettings | None = None) -> list[str]:
    """``anomaly``, the job name, ``k:v`` per series label, ``severity:<s>``, ``vigil_episode:<id>``."""
    tags = ["anomaly", episode.job]
    tags += [f"{k}:{v}" for k, v in sorted(episode.labels.items()) if v != ""]
    tags += [f"{k}:{v}" for k, v in sorted((job.labels if job else {}).items())]
    tags += [f"severity:{episode.severity}", episode_tag(episode.id)]
    seen: set[str] = set()
    return [t for t in tags if not (t in seen or seen.add(t))]  # type: ignore[func-returns-value]


def annotation_text(episode: StoredEpisode) -> str:
    """What a person reads on hover: why, how bad, what was expected, by which model."""
    when = format_span(episode.start_ms, episode.end_ms, ended=True)
    lines = [
        f"Anomaly in {episode.job}: {episode.series_key or '(no labels)'}",
        episode.reason or "values outside the expected band",
    ]
    if states_the_numbers(episode.reason, episode.peak_value, episode.unit):
        lines.append(f"{when}; episode {episode.id}.")  # the reason said the numbers: not twice
    else:
        band = (f"expected {format_value(episode.yhat, episode.unit)} in "
                f"[{format_value(episode.yhat_lower, episode.unit)}, {format_value(episode.yhat_upper, episode.unit)}]")
        lines.append(f"Peak anomaly score {episode.peak_score:.2f} at {iso_from_ms(episode.peak_ms)}: value "
                     f"{format_value(episode.peak_value, episode.unit)}, {band}.")
        lines.append(f"Model {episode.model or 'n/a'}; {when}; episode {episode.id}.")
    return "\n".join(lines)


class GrafanaSink:
    """Writes annotations to one Grafana organisation with a service-account token."""

    name = "grafana"

    def __init__(self, settings: GrafanaSettings, *, api: Any = None, app_api: AppAnnotations | None = None) -> None:
        if not settings.url:
            raise ValueError("The 'url' parameter of GrafanaSink must be set. Got None instead.")
        self.settings = settings
        self.app_api = app_api or AppAnnotations(settings)
        #: whether Grafana offers the new annotations API; None until it has said so
        self._app_offered: bool | None = None
        if api is None:
            from grafana_client import GrafanaApi, TokenAuth

            credential = TokenAuth(str(settings.token)) if settings.token else None
            api = GrafanaApi.from_url(settings.url, credential=credential, timeout=settings.request_timeout_s)
        self.api = api

    def __repr__(self) -> str:  # never shows the token
        return f"GrafanaSink(url={self.settings.url!r})"

    def region(self, episode: StoredEpisode) -> tuple[int, int]:
        end = episode.end_ms if episode.end_ms is not None else episode.last_ms
        return int(episode.start_ms), int(max(end, episode.start_ms))

    @property
    def request_timeout_s(self) -> float:
        return self.settings.request_timeout_s

    def uses_app_api(self) -> bool:
        """Whether annotations go through ``annotation.grafana.app`` (asked once; legacy while unsure)."""
        if self._app_offered is None:
            offered = self.app_api.offered()
            if offered is None:
                return False  # Grafana is failing: the legacy API is the safe choice for this attempt
            self._app_offered = offered
        return self._app_offered

    def find_all(self, episode: StoredEpisode) -> list[Any]:
        """Ids of every annotation carrying this episode's tag, oldest first."""
        if self.uses_app_api():
            name = annotation_name(episode.id)
            return [name] if self.app_api.get(name) is not None else []
        return self._legacy_find_all(episode)

    def _legacy_find_all(self, episode: StoredEpisode) -> list[int]:
        tag = episode_tag(episode.id)
        found = self.api.annotations.find_annotations(tags=[tag], ann_type="annotation", limit=100)
        return sorted(int(item["id"]) for item in found or [] if tag in (item.get("tags") or []))

    def find(self, episode: StoredEpisode) -> Any:
        """The id of the annotation already made for this episode, if any (the oldest one)."""
        ids = self.find_all(episode)
        return ids[0] if ids else None

    def remove_duplicates(self, annotation_id: Any, episode: StoredEpisode) -> list[Any]:
        """Delete any other annotation with this episode's tag; returns the ids deleted.

        Only a Grafana that completes a create long after our request timed out (and after the
        retry looked for it) can leave one; the episode's final update cleans it up. On the new
        API the name is unique, so there is none.
        """
        if isinstance(annotation_id, str):
            return []
        # Made through the legacy API (even if Grafana has offered the new one since): look there.
        extra = [i for i in self._legacy_find_all(episode) if i != annotation_id]
        for other in extra:
            self.api.annotations.delete_annotations_by_id(other)
        return extra

    def create(self, episode: StoredEpisode, job: JobSettings | None) -> Any:
        time_ms, time_end_ms = self.region(episode)
        if self.uses_app_api():
            spec: dict[str, Any] = {"text": annotation_text(episode), "time": time_ms, "timeEnd": time_end_ms,
                                    "tags": annotation_tags(episode, job)}
            if job and job.dashboard_uid:
                spec["dashboardUID"] = job.dashboard_uid
                if job.panel_id is not None:
                    spec["panelID"] = job.panel_id
            return self.app_api.create(annotation_name(episode.id), spec)
        answer = self.api.annotations.add_annotation(
            dashboard_uid=job.dashboard_uid if job else None,
            panel_id=job.panel_id if job and job.dashboard_uid else None,
            time_from=time_ms, time_to=time_end_ms,
            tags=annotation_tags(episode, job), text=annotation_text(episode),
        )
        return int(answer["id"])

    def find_or_create(self, episode: StoredEpisode, job: JobSettings | None) -> tuple[Any, bool]:
        """``(annotation id, created)``: looks for the episode's tag first (idempotence)."""
        existing = self.find(episode)
        if existing is not None:
            return existing, False
        return self.create(episode, job), True

    def deliver(self, episode: StoredEpisode, job: JobSettings | None, now_ms: int,
                remember: Remember) -> Delivered:
        """Make (or find, after a crash) the episode's annotation and bring it up to date.

        The id of an annotation just made is remembered before anything else can go wrong, so a
        retry updates it instead of making another."""
        from grafana_client.client import GrafanaTimeoutError

        try:
            return self._deliver(episode, job, remember)
        except GrafanaTimeoutError:
            raise DeliveryTimeout(f"grafana did not answer within {self.request_timeout_s:g}s") from None

    def _deliver(self, episode: StoredEpisode, job: JobSettings | None, remember: Remember) -> Delivered:
        if episode.annotation_id is None:
            annotation_id, created = self.find_or_create(episode, job)
            remember({"annotation_id": annotation_id}, "annotation_created" if created else "annotation_recovered",
                     {"annotation_id": annotation_id})
            if created:
                return Delivered("created", {"annotation_id": annotation_id})
            removed = self.update(annotation_id, episode, job)  # found after a crash: bring it up to date
            return Delivered("recovered", {"annotation_id": annotation_id,
                                           **({"duplicates_removed": removed} if removed else {})})
        removed = self.update(episode.annotation_id, episode, job)
        detail: dict[str, Any] = {"annotation_id": episode.annotation_id}
        if removed:
            detail["duplicates_removed"] = removed
        return Delivered("closed" if episode.end_ms is not None else "extended", detail)

    def update(self, annotation_id: Any, episode: StoredEpisode, job: JobSettings | None) -> list[Any]:
        """PATCH the region, text and tags (all of them: a PATCH with empty tags would wipe them).

        On the final update (the episode has ended) also removes duplicates; returns their ids.
        """
        time_ms, time_end_ms = self.region(episode)
        if isinstance(annotation_id, str):  # made through the new API: its name
            self.app_api.update(annotation_id, {"text": annotation_text(episode), "time": time_ms,
                                                "timeEnd": time_end_ms, "tags": annotation_tags(episode, job)})
            return []
        self.api.annotations.partial_update_annotation(
            annotation_id, time_from=time_ms, time_to=time_end_ms,
            tags=annotation_tags(episode, job), text=annotation_text(episode),
        )
        if episode.end_ms is not None:
            return self.remove_duplicates(annotation_id, episode)
        return []
