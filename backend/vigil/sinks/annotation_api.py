"""Grafana's new annotations API, ``/apis/annotation.grafana.app/v0alpha1`` (Grafana 12+, the
successor of the legacy ``/api/annotations`` that Grafana 13 deprecates).

Owns discovering whether a Grafana serves it (``GET /apis/annotation.grafana.app/v0alpha1``: a
Kubernetes ``APIResourceList`` naming ``annotations`` when it does, 404 when it does not) and the
four calls the Grafana sink needs, on Kubernetes-style objects::

    POST   /apis/annotation.grafana.app/v0alpha1/namespaces/<ns>/annotations          create
    GET    /apis/annotation.grafana.app/v0alpha1/namespaces/<ns>/annotations/<name>   find
    PATCH  .../annotations/<name>   (application/merge-patch+json)                   update
    DELETE .../annotations/<name>                                                     delete

with ``{"apiVersion": "annotation.grafana.app/v0alpha1", "kind": "Annotation", "metadata":
{"name"}, "spec": {"text", "time", "timeEnd", "dashboardUID", "panelID", "tags"}}`` (times in
epoch ms; shape from grafana/grafana ``apps/annotation/kinds/annotation.cue`` and
``apps/annotation/pkg/apis/annotation/v0alpha1/annotation_spec_gen.go``). The object's name is
derived from the episode id, so a retried create meets 409 AlreadyExists instead of making a
second annotation: the name is the idempotence key, as the ``vigil_episode:<id>`` tag is on the
legacy API.

Must not: decide when to deliver, or log the token.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests

from vigil.config import GrafanaSettings
from vigil.errors import DeliveryError, DeliveryTimeout

__all__ = ["GROUP_VERSION", "AnnotationApiError", "AppAnnotations", "annotation_name"]

GROUP_VERSION = "annotation.grafana.app/v0alpha1"
_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


class AnnotationApiError(DeliveryError):
    """Grafana answered the new API with an unexpected status (the outbox retries it)."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"Grafana answered {method} {path} with HTTP {status}: {body[:200]}")
        self.status = status


def annotation_name(episode_id: str) -> str:
    """``vigil-<episode id>``, lower-case and DNS-label safe (what a Kubernetes name must be)."""
    return ("vigil-" + _NAME_UNSAFE.sub("-", episode_id.lower())).strip("-")[:63]


class AppAnnotations:
    """The ``annotation.grafana.app`` client of one organisation (``settings.namespace``)."""

    def __init__(self, settings: GrafanaSettings, *, session: requests.Session | None = None) -> None:
        if not settings.url:
            raise ValueError("The 'url' parameter of AppAnnotations must be set. Got None instead.")
        self.base_url = settings.url.rstrip("/")
        self.request_timeout_s = settings.request_timeout_s
        self.namespace = settings.namespace
        self.session = session or requests.Session()
        if settings.token:
            self.session.headers["Authorization"] = f"Bearer {settings.token}"
        self.session.headers.setdefault("User-Agent", "vigil")

    def __repr__(self) -> str:  # never shows the token
        return f"AppAnnotations(url={self.base_url!r}, namespace={self.namespace!r})"

    @property
    def collection_path(self) -> str:
        return f"/apis/{GROUP_VERSION}/namespaces/{self.namespace}/annotations"

    def offered(self) -> bool | None:
        """True when Grafana serves the API, False when it does not (404 or refused), None when unsure (5xx)."""
        try:
            response = self.session.get(f"{self.base_url}/apis/{GROUP_VERSION}", timeout=self.request_timeout_s)
        except requests.RequestException:
            return None
        if response.status_code >= 500:
            return None
        if response.status_code != 200:
            return False
        try:
            resources = response.json().get("resources") or []
        except (ValueError, AttributeError):
            return False
        return any(r.get("name") == "annotations" and "create" in (r.get("verbs") or []) for r in resources
                   if isinstance(r, dict))

    def create(self, name: str, spec: dict[str, Any]) -> str:
        """Create the annotation ``name``; an existing one of that name is kept (idempotent). Returns the name."""
        body = {"apiVersion": GROUP_VERSION, "kind": "Annotation", "metadata": {"name": name}, "spec": spec}
        response = self._call("POST", self.collection_path, body=body, ok=(200, 201, 202, 409))
        if response.status_code == 409:
            return name
        return str(response.json().get("metadata", {}).get("name") or name)

    def get(self, name: str) -> dict[str, Any] | None:
        response = self._call("GET", f"{self.collection_path}/{name}", ok=(200, 404))
        return None if response.status_code == 404 else response.json()

    def update(self, name: str, spec: dict[str, Any]) -> None:
        self._call("PATCH", f"{self.collection_path}/{name}", body={"spec": spec},
                   content_type="application/merge-patch+json", ok=(200,))

    def delete(self, name: str) -> None:
        self._call("DELETE", f"{self.collection_path}/{name}", ok=(200, 202, 404))

    def _call(self, method: str, path: str, *, ok: tuple[int, ...], body: Any = None,
              content_type: str = "application/json") -> requests.Response:
        kwargs: dict[str, Any] = {"timeout": self.request_timeout_s}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"] = {"Content-Type": content_type}
        try:
            response = self.session.request(method, f"{self.base_url}{path}", **kwargs)
        except requests.Timeout:
            raise DeliveryTimeout(f"grafana did not answer {method} {path} within {self.request_timeout_s:g}s") from None
        if response.status_code not in ok:
            raise AnnotationApiError(method, path, response.status_code, response.text)
        return response
