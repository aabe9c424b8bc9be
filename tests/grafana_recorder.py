"""A recording HTTP server that speaks Grafana's annotations API (PROTOCOLS.md section 5).

No Grafana can run here, so this is what the worker's Grafana sink is held to. It checks what
Grafana checks and what we promise: the service-account bearer token, ``text`` present, times as
epoch MILLISECONDS (an epoch-seconds value is refused, it would land in 1970), ``timeEnd >= time``,
``tags`` a list of strings, ``panelId`` an integer or null. It stores annotations like Grafana
(``POST /api/annotations`` -> ``{"message": "Annotation added", "id": N}``, ``PATCH
/api/annotations/:id``, ``GET /api/annotations?tags=..&type=..&limit=..`` with AND-ed tags) and
records every request.

Faults for tests: :meth:`fail_next` answers N requests with a status (503 by default) without
acting; :meth:`hang_next` holds N requests for some seconds before acting normally (a timeout on
the client side); :meth:`lose_next_answer` acts on N requests but answers 503 (the annotation
exists although the client thinks it failed: Grafana's 200 lost on the way).

With ``app_api=True`` it also serves Grafana 12+'s ``annotation.grafana.app/v0alpha1`` API like
Grafana does (discovery document at ``/apis/annotation.grafana.app/v0alpha1``; Kubernetes-style
objects ``{apiVersion, kind, metadata: {name}, spec: {text, time, timeEnd, dashboardUID, panelID,
tags}}`` created with POST (201; 409 AlreadyExists for a taken name), read with GET by name,
changed with a ``application/merge-patch+json`` PATCH, removed with DELETE; unknown spec keys are
refused, as the schema's ``additionalProperties: false`` does). Without it, ``/apis/...`` is 404,
as on a Grafana that does not offer the new API. Every request is recorded with its answer.

Binds 127.0.0.1 only; ``port=0`` picks a free port. Use as a context manager.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

__all__ = ["GrafanaRecorder"]

_MIN_EPOCH_MS = 10**12  # 2001-09-09 in ms; an epoch in seconds is far below this


class GrafanaRecorder:
    def __init__(self, token: str = "test-token", *, port: int = 0, app_api: bool = False,
                 namespace: str = "default") -> None:
        self.token = token
        self.app_api = app_api
        self.namespace = namespace
        self.annotations: dict[int, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.rejections: list[tuple[int, str]] = []
        self.deleted: list[dict[str, Any]] = []
        self._next_id = 1
        self._lock = threading.Lock()
        self._fail: list[tuple[int, str | None]] = []
        self._hang: list[tuple[float, str | None]] = []
        self._lose = 0
        self._hanging: list[str] = []  # methods of the requests being held right now
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                recorder._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                recorder._handle(self, "POST")

            def do_PATCH(self) -> None:  # noqa: N802
                recorder._handle(self, "PATCH")

            def do_PUT(self) -> None:  # noqa: N802
                recorder._handle(self, "PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                recorder._handle(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "GrafanaRecorder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "GrafanaRecorder":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503, method: str | None = None) -> None:
        """Answer the next ``count`` requests (of ``method``, if given) with ``status``, doing nothing."""
        with self._lock:
            self._fail.extend([(status, method)] * count)

    def hang_next(self, count: int, seconds: float, method: str | None = None) -> None:
        """Hold the next ``count`` requests (of ``method``) ``seconds`` long, then act on them normally."""
        with self._lock:
            self._hang.extend([(seconds, method)] * count)

    def lose_next_answer(self, count: int = 1) -> None:
        with self._lock:
            self._lose += count

    # -- views -----------------------------------------------------------------------------------

    def by_tag(self, tag: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a) for a in self.annotations.values() if tag in a["tags"]]

    def hanging(self, method: str | None = None) -> int:
        """How many requests (of ``method``) are being held by :meth:`hang_next` right now."""
        with self._lock:
            return sum(1 for m in self._hanging if method is None or m == method)

    def creates(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["status"] in (200, 201)]

    # -- the API ---------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        with self._lock:
            fail = _pop_matching(self._fail, method)
            hang = _pop_matching(self._hang, method)
            lose = False
            if fail is None and self._lose and method in ("POST", "PATCH"):
                self._lose -= 1
                lose = True
        record: dict[str, Any] = {"method": method, "path": url.path, "query": url.query,
                                  "authorization": request.headers.get("Authorization"), "body": None,
                                  "content_type": request.headers.get("Content-Type")}
        if hang:
            with self._lock:
                self._hanging.append(method)
            time.sleep(hang)  # the fault itself (a slow Grafana), not a wait for the test
            with self._lock:
                self._hanging.remove(method)
        if fail is not None:
            record["status"] = fail
            self._record(record)
            return self._send(request, fail, {"message": "injected failure"})
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            record["status"] = 401
            self._record(record)
            return self._send(request, 401, {"message": "Unauthorized"})
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record["body"] = body
        if url.path.startswith("/apis/"):
            status, answer = self._app_api(method, url.path, body, record["content_type"] or "")
        else:
            status, answer = self._api(method, url.path, parse_qs(url.query), body)
        record["status"] = status
        record["answer"] = answer
        self._record(record)
        if lose:
            return self._send(request, 503, {"message": "answer lost"})
        self._send(request, status, answer)

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(record)

    def _reject(self, why: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.rejections.append((400, why))
        return 400, {"message": why}

    def _check_fields(self, body: Any, *, partial: bool) -> str | None:
        if not isinstance(body, dict):
            return "body must be a JSON object"
        if not partial and not (isinstance(body.get("text"), str) and body["text"]):
            return "text is required"
        for key in ("time", "timeEnd"):
            value = body.get(key)
            if value is None and (partial or key == "timeEnd"):
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                return f"{key} must be an integer (epoch ms); got {value!r}"
            if value < _MIN_EPOCH_MS:
                return f"{key} must be epoch MILLISECONDS; got {value} (seconds?)"
        if isinstance(body.get("timeEnd"), int) and isinstance(body.get("time"), int) and body["timeEnd"] < body["time"]:
            return "timeEnd must not be before time"
        tags = body.get("tags")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            return "tags must be a list of strings"
        panel = body.get("panelId")
        if panel is not None and (not isinstance(panel, int) or isinstance(panel, bool)):
            return "panelId must be an integer"
        if "dashboardUID" in body and body["dashboardUID"] is not None and not isinstance(body["dashboardUID"], str):
            return "dashboardUID must be a string"
        return None

    def _api(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        parts = path.rstrip("/").split("/")
        if path.rstrip("/") == "/api/annotations" and method == "POST":
            problem = self._check_fields(body, partial=False)
            if problem:
                return self._reject(problem)
            with self._lock:
                annotation_id = self._next_id
                self._next_id += 1
                self.annotations[annotation_id] = {
                    "id": annotation_id, "dashboardUID": body.get("dashboardUID") or "",
                    "panelId": body.get("panelId") or 0, "time": body["time"],
                    "timeEnd": body.get("timeEnd") or body["time"], "tags": list(body.get("tags") or []),
                    "text": body["text"], "type": "annotation",
                }
            return 200, {"message": "Annotation added", "id": annotation_id}
        if len(parts) == 4 and parts[:3] == ["", "api", "annotations"] and method == "PATCH":
            problem = self._check_fields(body, partial=True)
            if problem:
                return self._reject(problem)
            try:
                annotation_id = int(parts[3])
            except ValueError:
                return 404, {"message": "Annotation not found"}
            with self._lock:
                existing = self.annotations.get(annotation_id)
                if existing is None:
                    return 404, {"message": "Annotation not found"}
                for key in ("time", "timeEnd", "text", "tags"):
                    if body.get(key) not in (None, ""):
                        existing[key] = body[key]
                existing["patches"] = existing.get("patches", 0) + 1
            return 200, {"message": "Annotation patched"}
        if len(parts) == 4 and parts[:3] == ["", "api", "annotations"] and method == "DELETE":
            with self._lock:
                try:
                    removed = self.annotations.pop(int(parts[3]), None)
                except ValueError:
                    removed = None
                if removed is not None:
                    self.deleted.append(removed)
            if removed is None:
                return 404, {"message": "Annotation not found"}
            return 200, {"message": "Annotation deleted"}
        if path.rstrip("/") == "/api/annotations" and method == "GET":
            tags = query.get("tags", [])
            limit = int(query.get("limit", ["100"])[0])
            with self._lock:
                found = [dict(a) for a in self.annotations.values() if all(t in a["tags"] for t in tags)]
            if "from" in query:
                found = [a for a in found if a["timeEnd"] >= int(query["from"][0])]
            if "to" in query:
                found = [a for a in found if a["time"] <= int(query["to"][0])]
            found.sort(key=lambda a: -a["time"])
            return 200, found[:limit]
        return 404, {"message": "Not found"}

    # -- annotation.grafana.app/v0alpha1 --------------------------------------------------------

    _GROUP = "/apis/annotation.grafana.app/v0alpha1"
    _SPEC_KEYS = {"text", "time", "timeEnd", "dashboardUID", "panelID", "tags"}

    @staticmethod
    def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
        return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code}

    def _object(self, a: dict[str, Any]) -> dict[str, Any]:
        spec = {"text": a["text"], "time": a["time"], "timeEnd": a["timeEnd"], "tags": a["tags"]}
        if a["dashboardUID"]:
            spec["dashboardUID"] = a["dashboardUID"]
        if a["panelId"]:
            spec["panelID"] = a["panelId"]
        return {"kind": "Annotation", "apiVersion": "annotation.grafana.app/v0alpha1",
                "metadata": {"name": a["name"], "namespace": self.namespace, "uid": f"uid-{a['id']}",
                             "resourceVersion": str(a.get("patches", 0) + a["id"] * 1000),
                             "creationTimestamp": "2025-01-01T06:00:00Z"},
                "spec": spec}

    def _check_spec(self, spec: Any, *, partial: bool) -> str | None:
        if not isinstance(spec, dict):
            return "spec must be an object"
        unknown = set(spec) - self._SPEC_KEYS
        if unknown:
            return f"spec: unknown field(s) {sorted(unknown)}"
        legacy = {k: v for k, v in spec.items() if k != "panelID"}
        if "panelID" in spec:
            legacy["panelId"] = spec["panelID"]
        return self._check_fields(legacy, partial=partial)

    def _app_api(self, method: str, path: str, body: Any, content_type: str) -> tuple[int, Any]:
        if not self.app_api:
            return 404, {"message": "Not found"}
        if path.rstrip("/") == self._GROUP and method == "GET":
            return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": "annotation.grafana.app/v0alpha1",
                         "resources": [{"name": "annotations", "singularName": "annotation", "namespaced": True,
                                        "kind": "Annotation",
                                        "verbs": ["create", "delete", "get", "list", "patch", "update"]}]}
        prefix = f"{self._GROUP}/namespaces/{self.namespace}/annotations"
        if not path.startswith(prefix):
            return self._status(404, "NotFound", f"the server could not find the requested resource ({path})")
        name = path[len(prefix):].strip("/")
        with self._lock:
            found = next((a for a in self.annotations.values() if a.get("name") == name), None) if name else None
        if not name and method == "POST":
            if not isinstance(body, dict) or body.get("kind") != "Annotation" \
                    or body.get("apiVersion") != "annotation.grafana.app/v0alpha1":
                return self._reject("the body must be an Annotation of annotation.grafana.app/v0alpha1")
            wanted = (body.get("metadata") or {}).get("name")
            problem = self._check_spec(body.get("spec"), partial=False)
            if problem or not isinstance(wanted, str) or not wanted:
                return self._reject(problem or "metadata.name is required")
            spec = body["spec"]
            with self._lock:
                if any(a.get("name") == wanted for a in self.annotations.values()):
                    return self._status(409, "AlreadyExists", f'annotations "{wanted}" already exists')
                annotation_id = self._next_id
                self._next_id += 1
                created = self.annotations[annotation_id] = {
                    "id": annotation_id, "name": wanted, "dashboardUID": spec.get("dashboardUID") or "",
                    "panelId": spec.get("panelID") or 0, "time": spec["time"],
                    "timeEnd": spec.get("timeEnd") or spec["time"], "tags": list(spec.get("tags") or []),
                    "text": spec["text"], "type": "annotation",
                }
                return 201, self._object(created)
        if found is None:
            return self._status(404, "NotFound", f'annotations "{name}" not found')
        if method == "GET":
            with self._lock:
                return 200, self._object(found)
        if method == "PATCH":
            if content_type.split(";")[0].strip() != "application/merge-patch+json":
                return 415, {"message": f"unsupported media type {content_type!r}"}
            spec = (body or {}).get("spec") if isinstance(body, dict) else None
            problem = self._check_spec(spec, partial=True)
            if problem:
                return self._reject(problem)
            with self._lock:
                for key, value in spec.items():
                    found["panelId" if key == "panelID" else key] = value
                found["patches"] = found.get("patches", 0) + 1
                return 200, self._object(found)
        if method == "DELETE":
            with self._lock:
                self.annotations.pop(found["id"], None)
                self.deleted.append(found)
            return 200, self._status(200, "", "deleted")[1] | {"status": "Success"}
        return 405, {"message": "method not allowed"}

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


def _pop_matching(queue: list[tuple[Any, str | None]], method: str) -> Any:
    for i, (value, only) in enumerate(queue):
        if only is None or only == method:
            del queue[i]
            return value
    return None
