"""Fuzz, load and fault run of Vigil's HTTP API, generated from its OpenAPI description.

Run: ``make fuzz`` (``.venv/bin/python -m bench fuzz --requests 10000``). Starts a real Prometheus
seeded with history and a real ``vigil serve`` (gunicorn) on loopback, then at once:

- sends ``--requests`` property-based requests (hypothesis) to every operation of
  ``backend/vigil/http/openapi.json``: bodies generated from the schemas, then mutated (any subtree
  replaced by random JSON, lone surrogates, huge or non-finite numbers, path text in label names),
  plus raw hostile bodies (deep nesting, invalid UTF-8, NaN literals, oversized bodies); query
  and form-encoded parameters (``/prometheus``) from their examples or hostile values (huge,
  NaN, negative times and steps, a megabyte query, deep parentheses, NUL); path parameters
  (``{name}``, ``{rest}``) from their examples or path text, URL-quoted;
- keeps ``--panels`` valid panel queries running concurrently (the load);
- probes ``/healthz`` every 50 ms (its latency under load);
- stops Prometheus for a few seconds mid-run and SIGKILLs the gunicorn worker (the faults);
- samples the RSS of every gunicorn process;

then runs the worker's fault scenarios (``tests/test_worker_faults.py`` watching
``--fault-series`` series: Grafana answering 503 and hanging, Alertmanager and Prometheus
stopped; ``vigil worker`` SIGKILLed twice in the middle of deliveries) and counts what was lost.

``vigil serve`` runs as it ships (one worker process, its default threads and slots), with a token.

Prints a table: unexpected 5xx (500, 502, or any 5xx that is not JSON; 503/504 only while
Prometheus is stopped are expected), error answers without a JSON ``message`` (under
``/prometheus``: without Prometheus' envelope ``{status: "error", errorType, error}``), memory growth per
process, ``/healthz`` p50/p99/max, and per worker fault run the episodes recorded, annotated,
alerted and resolved against those expected. Exit status 1 when a target is missed.

The same generators drive ``tests/test_fuzz.py`` at a small size through Flask's test client.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
from hypothesis import HealthCheck, given, seed as hseed, settings as hsettings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "backend" / "vigil" / "http" / "openapi.json"
EXPECTED_UPSTREAM = {503, 504}


# -- generators -----------------------------------------------------------------------------------

def load_openapi() -> dict[str, Any]:
    return json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (METHOD, path, operation) of the description."""
    return [(method.upper(), path, op) for path, item in doc["paths"].items() for method, op in item.items()]


_HOSTILE_TEXT = [
    "../../../api/v1/status/config?x=", "../status/flags#", "\ud800", "a\udfffb", "\x00", "{__name__=~\".+\"}",
    'label_replace({__name__=~".+"}, "a", "$1", "job", "(.*)")', "now-1e306", "1e306", "-1", "NaN", "Infinity",
    "x" * 10_000, "rate(x[5m", "' OR 1=1 --", "%00", "😀" * 50, "9" * 400, "1h" * 50,
]
_HOSTILE_NUMBERS = [0, -1, 10 ** 400, 1e308, -1e308, 2 ** 63, 0.5, 1e-300]
#: Query and form parameter values (times, steps, PromQL) as Prometheus' API takes them: text.
_HOSTILE_PARAMS = [
    "1e306", "-1e306", "1e999", "NaN", "nan", "Inf", "+Inf", "-Inf", "9999999999999", "-62135596800", "0", "-1", "-5m",
    "0s", "1e-300", "2026-13-45T99:00:00Z", "now", "anomaly_score(up)", 'anomaly_score(up, "model=seasonal")',
    "anomaly_score(" + "(" * 2000 + "up" + ")" * 2000 + ")", "(" * 5000 + "up" + ")" * 5000, "anomaly_score(up, 5)",
    'anomaly_score(up, "train_window=1e306d")', "sum(anomaly_score(up))", "anomaly_score(" + "x" * 1_000_000 + ")",
    "up\x00", '{__name__=~".+"}', "../../../api/v1/status/config?x=",
]


def json_values() -> st.SearchStrategy[Any]:
    text = st.text(alphabet=st.characters(codec=None), max_size=30) | st.sampled_from(_HOSTILE_TEXT)
    leaves = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
              | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(_HOSTILE_NUMBERS) | text)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=10)


def from_schema(schema: dict[str, Any], doc: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for values valid against (a useful subset of) an OpenAPI schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return from_schema(doc["components"]["schemas"][name], doc, depth)
    if "oneOf" in schema:
        return st.one_of([from_schema(s, doc, depth) for s in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        if not props or depth > 4:
            return st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
        return st.fixed_dictionaries(
            {k: from_schema(v, doc, depth + 1) for k, v in props.items() if k in required},
            optional={k: from_schema(v, doc, depth + 1) for k, v in props.items() if k not in required})
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), doc, depth + 1),
                        max_size=min(schema.get("maxItems", 4), 4))
    if kind == "string":
        choices = [st.text(max_size=20)]
        if "example" in schema:
            choices.append(st.just(schema["example"]))
        if "pattern" in schema:
            choices.append(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True))
        return st.one_of(choices)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(2 ** 40)), max_value=int(schema.get("maximum", 2 ** 40)))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"),
                         allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    return json_values()


def _mutate(value: Any, rnd: random.Random, replacement: Any) -> Any:
    """``value`` with one randomly chosen subtree replaced by ``replacement``."""
    if not isinstance(value, (dict, list)) or not value or rnd.random() < 0.25:
        return replacement
    out: Any = dict(value) if isinstance(value, dict) else list(value)
    key = rnd.choice(list(out)) if isinstance(out, dict) else rnd.randrange(len(out))
    out[key] = _mutate(out[key], rnd, replacement)
    return out


def _raw_hostile(valid: bytes) -> list[bytes]:
    return [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"targets": 5, "range": {"from": "now-1h", "to": "now"}}',
        b'{"targets": [{"target": "up\\ud800"}], "range": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}}',
        b'{"query": "up", "step": NaN}', b'{"query": "up", "from": 1e999}', b'{"query": "up", "to": ' + b"9" * 5000 + b"}",
        b"\xff\xfe\x00{", b"\xef\xbb\xbf{}", b"", b"null", b"{}" * 10, valid[: len(valid) // 2],
        b'{"targets": [' + b",".join([b'{"target": "up"}'] * 5000) + b'], "range": {"from": "now-1h", "to": "now"}}',
        b'{"q": "' + b"x" * 1_200_000 + b'"}',
    ]


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes | None
    #: the operation's path in openapi.json (``path`` with its ``{name}`` parameters filled in)
    operation: str = ""

    def describe(self) -> str:
        body = (self.body or b"")[:200]
        return f"{self.method} {self.path} params={str(self.params)[:200]} body={body!r}"


def _param_values(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Text for one query, form or path parameter: its example, random text or a hostile value."""
    schema = schema.get("items", schema) if schema.get("type") == "array" else schema
    choices: list[st.SearchStrategy[str]] = [
        st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
        st.sampled_from(_HOSTILE_PARAMS + [t for t in _HOSTILE_TEXT if "\ud800" not in t and "\udfff" not in t])]
    if "example" in schema:
        choices += [st.just(str(schema["example"]))] * 2
    return st.one_of(choices)


def _param_sets(schemas: dict[str, dict[str, Any]]) -> st.SearchStrategy[dict[str, str]]:
    """Parameters: any subset with any values, or every example (a valid request, which reaches
    the code behind the validation) with at most one of them replaced."""
    names = sorted(schemas)
    anything = st.dictionaries(st.sampled_from(names), st.just(None), max_size=len(names)).flatmap(
        lambda chosen: st.fixed_dictionaries({n: _param_values(schemas[n]) for n in chosen}))
    examples = {n: str(s.get("items", s).get("example")) for n, s in schemas.items() if "example" in s.get("items", s)}
    if not examples:
        return anything
    valid = st.just(examples)
    one_off = st.sampled_from(names).flatmap(lambda n: _param_values(schemas[n]).map(lambda v: {**examples, n: v}))
    return st.one_of(anything, valid, one_off)


def _path_with(path: str, op: dict[str, Any]) -> st.SearchStrategy[str]:
    """``path`` with its ``{name}`` parameters filled in, URL-quoted (``/`` kept in the last one)."""
    names = [p for p in op.get("parameters", []) if p.get("in") == "path"]
    if not names:
        return st.just(path)

    def fill(values: list[str]) -> str:
        out = path
        for p, value in zip(names, values, strict=True):
            out = out.replace("{" + p["name"] + "}", urllib.parse.quote(value, safe="/" if p["name"] == "rest" else "")
                              or "x")
        return out

    return st.tuples(*[_param_values(p.get("schema", {})) for p in names]).map(lambda t: fill(list(t)))


def _form(schema: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A form-encoded body from an ``application/x-www-form-urlencoded`` schema."""
    props = schema.get("properties", {})
    if not props:
        return st.just(b"")
    return _param_sets(props).map(lambda fields: urllib.parse.urlencode(fields).encode())


def requests_for(doc: dict[str, Any], token: str | None, valid_body: bytes) -> st.SearchStrategy[FuzzRequest]:
    """Requests to any operation of ``doc`` (see :func:`request_strategies`)."""
    return st.one_of(request_strategies(doc, token, valid_body))


def request_strategies(doc: dict[str, Any], token: str | None,
                       valid_body: bytes) -> list[st.SearchStrategy[FuzzRequest]]:
    """One strategy per operation of ``doc``: schema-valid, mutated, or raw hostile bytes; query,
    form and path parameters from their examples or hostile text."""
    good = {"Authorization": f"Bearer {token}"} if token else {}
    auth = st.sampled_from([good] * 8 + [{}, {"Authorization": "Bearer wrong-token-in-header"},
                                         {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer " + "x" * 5000}])
    ctype = st.sampled_from([{"Content-Type": "application/json"}, {"Content-Type": "text/plain"}, {},
                             {"Content-Type": "application/x-www-form-urlencoded"}])
    per_op = []
    form_ctype = st.sampled_from([{"Content-Type": "application/x-www-form-urlencoded"}] * 6
                                 + [{"Content-Type": "application/json"}, {}])
    for method, path, op in operations(doc):
        content = (op.get("requestBody") or {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        form = content.get("application/x-www-form-urlencoded", {}).get("schema")
        query = {p["name"]: p.get("schema", {}) for p in op.get("parameters", []) if p.get("in", "query") == "query"}
        if query:
            params = _param_sets(query)
        else:
            params = st.dictionaries(st.text(max_size=6), st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
                                     | st.sampled_from([t for t in _HOSTILE_TEXT if "\ud800" not in t
                                                        and "\udfff" not in t]), max_size=4)
        where = _path_with(path, op)
        if form is not None:
            body = st.one_of(_form(form), _form(form), _form(form), _form(form), st.binary(max_size=200),
                             st.just(b"query=" + b"x" * 1_200_000))
            per_op.append(st.builds(lambda m, p, q, a, c, b, o: FuzzRequest(m, p, q, {**a, **c}, b, o),
                                    st.just(method), where, st.just({}) | params, auth, form_ctype, body,
                                    st.just(path)))
            continue
        if schema is not None:
            valid = from_schema(schema, doc)
            mutated = st.tuples(valid, st.randoms(use_true_random=False), json_values()).map(
                lambda t: _mutate(t[0], t[1], t[2]))
            values = st.one_of(valid, mutated, mutated, json_values())
            body = st.one_of(values.map(lambda v: json.dumps(v, ensure_ascii=True).encode()),
                             st.sampled_from(_raw_hostile(valid_body)), st.binary(max_size=200))
        else:
            body = st.none() | st.binary(max_size=100)
        per_op.append(st.builds(lambda m, p, q, a, c, b, o: FuzzRequest(m, p, q, {**a, **c}, b, o),
                                st.just(method), where, params, auth, ctype, body, st.just(path)))
    return per_op


# -- classification ------------------------------------------------------------------------------

@dataclass
class Tally:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    unexpected_5xx: list[str] = field(default_factory=list)
    non_json_errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: FuzzRequest, status: int, body: bytes, *, upstream_down: bool = False) -> None:
        with self.lock:
            self.sent += 1
            self.statuses[status] += 1
            message = _json_message(body)
            if status >= 400 and not message:
                self.non_json_errors.append(f"{status} {request.describe()} -> {body[:200]!r}")
            if status >= 500 and not (status in EXPECTED_UPSTREAM and message
                                      and (upstream_down or _upstream_word(body))):
                self.unexpected_5xx.append(f"{status} {request.describe()} -> {body[:300]!r}")


def _json_message(body: bytes) -> str | None:
    """The error's sentence: ``message`` of Vigil's errors, ``error`` of Prometheus' envelope."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str) and parsed["message"]:
        return parsed["message"]
    if (isinstance(parsed, dict) and parsed.get("status") == "error" and isinstance(parsed.get("errorType"), str)
            and isinstance(parsed.get("error"), str) and parsed["error"]):
        return parsed["error"]
    return None


def _upstream_word(body: bytes) -> bool:
    """503/504 are expected only when Prometheus itself was slow or unavailable."""
    try:
        parsed = json.loads(body)
        return (parsed.get("error") in ("upstream_unavailable", "upstream_timeout")
                or (parsed.get("status") == "error" and parsed.get("errorType") in ("unavailable", "timeout")))
    except (ValueError, AttributeError):
        return False


def run_property(send: Callable[[FuzzRequest], tuple[int, bytes]], tally: Tally, *, examples: int, seed: int,
                 token: str | None, valid_body: bytes, upstream_down: Callable[[], bool] = lambda: False) -> None:
    """Send ``examples`` generated requests through ``send``, recording every answer in ``tally``."""
    doc = load_openapi()
    strategies = request_strategies(doc, token, valid_body)
    # Each operation gets its share of the examples: a random choice among ~40 left some out.
    share = max(1, examples // len(strategies))
    for index, strategy in enumerate(strategies):
        count = share + (1 if index < examples - share * len(strategies) else 0)

        @hseed(seed + index)
        @hsettings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def one(request: FuzzRequest) -> None:
            try:
                status, body = send(request)
            except requests.RequestException as exc:
                with tally.lock:
                    tally.sent += 1
                    tally.transport_errors.append(f"{type(exc).__name__} {request.describe()}")
                return
            tally.record(request, status, body, upstream_down=upstream_down())

        one()


# -- the full run against real processes ------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--panels", type=int, default=6, help="concurrent valid panel queries (the load)")
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--fault-series", type=int, default=20,
                        help="series the worker fault runs watch (0: skip them)")
    args = parser.parse_args(argv)

    from realstack import free_port, start_prometheus, wait_for
    from bench.history import openmetrics_history

    work = Path(tempfile.mkdtemp(prefix="vigil-fuzz-"))
    end_ms = (int(time.time() * 1000) // 60_000 - 1) * 60_000
    text = openmetrics_history("fuzz_metric", args.series, end_ms, 7.5, seed_base=500, labels={"job": "fuzz"})
    prometheus = start_prometheus(work, openmetrics=text)
    token = "fuzz-token-0123456789"
    config = work / "vigil.yaml"
    config.write_text(f"server:\n  token: {token}\naudit:\n  path: {work}/audit.db\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    log_path = work / "serve.log"
    log = open(log_path, "wb")
    server = subprocess.Popen([sys.executable, "-m", "vigil.cli", "serve", "--config", str(config),
                               "--prometheus-url", prometheus.url, "--host", "127.0.0.1", "--port", str(port),
                               "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000))  # noqa: E731
    panel = {"range": {"from": iso(end_ms - 6 * 3600_000), "to": iso(end_ms)}, "intervalMs": 60_000,
             "maxDataPoints": 360, "targets": [{"refId": "A", "target": "fuzz_metric", "payload": {"model": "auto"}}]}
    valid_body = json.dumps(panel).encode()
    tally = Tally()
    stop = threading.Event()
    health_ms: list[float] = []
    health_bad: list[int] = []
    load_statuses: Counter = Counter()
    rss: dict[int, list[float]] = {}
    idle_ms: list[float] = []
    load_before = float("nan")
    faults: list[str] = []
    down = threading.Event()
    try:
        wait_for(lambda: _ok(f"{url}/healthz"), deadline_s=60, what="vigil serve up")
        session = requests.Session()
        idle_ms = []  # /healthz with Vigil idle: what this (shared) machine allows at best
        for _ in range(100):
            t0 = time.perf_counter()
            session.get(f"{url}/healthz", timeout=10)
            idle_ms.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
        load_before = os.getloadavg()[0]

        def send(request: FuzzRequest) -> tuple[int, bytes]:
            r = session.request(request.method, url + request.path, params=request.params, headers=request.headers,
                                data=request.body, timeout=60)
            return r.status_code, r.content

        def load() -> None:
            s = requests.Session()
            while not stop.is_set():
                try:
                    r = s.post(f"{url}/json/query", json=panel, headers=auth, timeout=60)
                    load_statuses[r.status_code] += 1
                    if r.status_code >= 400 and not _json_message(r.content):
                        tally.non_json_errors.append(f"load {r.status_code} {r.content[:200]!r}")
                    if r.status_code >= 500 and not (r.status_code in EXPECTED_UPSTREAM and down.is_set()):
                        tally.unexpected_5xx.append(f"load {r.status_code} {r.content[:300]!r}")
                    if r.status_code == 429:
                        stop.wait(float(r.headers.get("Retry-After", "1")) / 4)
                except requests.RequestException as exc:
                    load_statuses[type(exc).__name__] += 1

        # /healthz is probed from its own process, as the kubelet would: a thread here would
        # wait for this busy process's GIL and measure the fuzzer, not Vigil.
        probe_stop = multiprocessing.Event()
        probe_out = work / "healthz.json"
        prober = multiprocessing.Process(target=_probe_healthz, args=(url, probe_stop, str(probe_out)), daemon=True)
        prober.start()

        def sample() -> None:
            while not stop.is_set():
                for pid in [server.pid, *_children(server.pid)]:
                    mb = _rss_mb(pid)
                    if mb is not None:
                        rss.setdefault(pid, []).append(mb)
                stop.wait(1.0)

        def inject_faults() -> None:
            if args.no_faults:
                return
            if stop.wait(20):
                return
            down.set()
            prometheus.stop()
            faults.append("Prometheus stopped 5 s")
            stop.wait(5)
            prometheus.start()
            wait_for(lambda: _ok(f"{prometheus.url}/-/ready"), deadline_s=30)
            stop.wait(2)
            down.clear()
            if stop.wait(15):
                return
            workers = _children(server.pid)
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                faults.append(f"gunicorn worker {workers[0]} SIGKILLed")

        threads = [threading.Thread(target=load, daemon=True) for _ in range(args.panels)]
        threads += [threading.Thread(target=f, daemon=True) for f in (sample, inject_faults)]
        started = time.monotonic()
        for t in threads:
            t.start()
        run_property(send, tally, examples=args.requests, seed=args.seed, token=token, valid_body=valid_body,
                     upstream_down=down.is_set)
        elapsed_s = time.monotonic() - started
        probe_stop.set()
        prober.join(timeout=30)
        probed = json.loads(probe_out.read_text())
        health_ms.extend(probed["ms"])
        health_bad.extend(probed["bad"])
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        prometheus.stop()

    worker_faults = run_worker_faults(args.fault_series) if args.fault_series else []
    growth = {pid: (max(v) - v[min(len(v) - 1, 5)]) for pid, v in rss.items() if len(v) > 6}
    worst_growth = max(growth.values(), default=0.0)
    rows = [
        ("fuzzed requests sent", f"{tally.sent}", f"{args.requests}"),
        ("  answers by status", " ".join(f"{k}:{v}" for k, v in sorted(tally.statuses.items())), ""),
        ("  transport errors (connection reset: worker killed)", f"{len(tally.transport_errors)}", "few, at the kill"),
        ("concurrent panel answers", " ".join(f"{k}:{v}" for k, v in sorted(load_statuses.items(), key=str)),
         f"{args.panels} panels"),
        ("unexpected 5xx", f"{len(tally.unexpected_5xx)}", "0"),
        ("error answers without JSON message", f"{len(tally.non_json_errors)}", "0"),
        ("max RSS growth of one process (MB)", f"{worst_growth:.0f}", "< 100 + model cache"),
        ("/healthz p50 / p99 / max (ms)",
         f"{_p(health_ms, 0.5):.1f} / {_p(health_ms, 0.99):.1f} / {max(health_ms, default=float('nan')):.1f}", "p99 < 100"),
        ("/healthz p50 / p99 with Vigil idle (ms)", f"{_p(idle_ms, 0.5):.1f} / {_p(idle_ms, 0.99):.1f}", "the machine's floor"),
        ("machine load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f}", "2 cores"),
        ("/healthz failures", f"{len(health_bad)} of {len(health_ms) + len(health_bad)}", "0 outside the kill"),
        ("faults injected", "; ".join(faults) or "none", ""),
        ("wall time", f"{elapsed_s:.0f}s", ""),
    ]
    for fault in worker_faults:
        rows.append((f"worker: {fault.name}"[:52], fault.measured(), "0 lost, 0 repeated"))
    print(f"\nVigil fuzz/load/fault run: {args.requests} generated requests from openapi.json, "
          f"{args.panels} concurrent panels, seed {args.seed}\n")
    print(f"| {'what':<52} | {'measured':<44} | {'target':<20} |")
    print(f"|{'-' * 54}|{'-' * 46}|{'-' * 22}|")
    for what, measured, target in rows:
        print(f"| {what:<52} | {measured:<44} | {target:<20} |")
    for title, items in (("unexpected 5xx", tally.unexpected_5xx), ("non-JSON errors", tally.non_json_errors)):
        for item in items[:10]:
            print(f"{title}: {item}")
    print(f"\nserver log: {log_path}")
    for fault in worker_faults:
        if not fault.passed:
            print(f"worker fault run {fault.name} failed:\n{fault.output[-3000:]}")
    ok = (not tally.unexpected_5xx and not tally.non_json_errors and _p(health_ms, 0.99) < 100 and worst_growth < 300
          and all(f.passed and f.lost == 0 for f in worker_faults))
    return 0 if ok else 1


# -- the worker's faults: tests/test_worker_faults.py at a larger size ------------------------------

@dataclass
class WorkerFault:
    name: str
    passed: bool
    report: dict[str, int]
    output: str

    @property
    def lost(self) -> int:
        """Episodes without their audit record, annotation, firing or resolved alert."""
        r = self.report
        if not r:
            return -1
        expected = r["episodes_expected"]
        return max(expected - r["episodes_recorded"], r["annotations_expected"] - r["episodes_with_one_annotation"],
                   r["episodes_total"] - r["alerts_fired"], r["episodes_total"] - r["alerts_resolved"])

    def measured(self) -> str:
        r = self.report
        if not r:
            return "FAILED (see below)"
        return (f"episodes {r['episodes_recorded']}/{r['episodes_expected']}, annotations "
                f"{r['annotations_delivered']}/{r['annotations_expected']}, alerts fired {r['alerts_fired']} "
                f"resolved {r['alerts_resolved']}{'' if self.passed else ' FAILED'}")


def run_worker_faults(series: int) -> list[WorkerFault]:
    """Both fault scenarios of ``tests/test_worker_faults.py`` (real Prometheus, Alertmanager and
    ``vigil worker``; the Grafana recorder) watching ``series`` series; their reports parsed."""
    root = Path(__file__).resolve().parent.parent
    out: list[WorkerFault] = []
    for test, name in (("test_outages_of_grafana_alertmanager_and_prometheus_lose_and_duplicate_nothing",
                        "Grafana 503+hangs, Alertmanager and Prometheus down"),
                       ("test_sigkill_in_the_middle_of_a_delivery", "SIGKILL mid-delivery, twice")):
        ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                              f"tests/test_worker_faults.py::{test}"], cwd=root, capture_output=True, text=True,
                             env={**os.environ, "FAULT_RUN_SERIES": str(series)}, timeout=900)
        report: dict[str, int] = {}
        for line in ran.stdout.splitlines():
            if line.startswith("FAULTS ") and "{" in line:
                report = json.loads(line[line.index("{"):])
        out.append(WorkerFault(name, ran.returncode == 0, report,
                               ran.stdout + ran.stderr))
    return out


def _probe_healthz(url: str, stop: Any, out_path: str) -> None:
    """GET /healthz every 50 ms until ``stop``; latencies (ms) and failures written to ``out_path``."""
    session = requests.Session()
    ms: list[float] = []
    bad: list[int] = []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = session.get(f"{url}/healthz", timeout=10)
            ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                bad.append(r.status_code)
        except requests.RequestException:
            bad.append(-1)
        stop.wait(0.05)
    Path(out_path).write_text(json.dumps({"ms": ms, "bad": bad}))


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    sys.exit(main())
