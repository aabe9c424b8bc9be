"""The Kubernetes manifests: they render, validate strictly, and keep Vigil away from the application.

Every overlay is rendered with the real ``kubectl kustomize`` and validated with
``kubernetes-validate --strict`` against Kubernetes 1.25 (the oldest we support) and the newest
version the validator knows. The validator has no schema for CRDs: the ServiceMonitors are the only
objects it may skip, and they are checked here against the Services they select instead.

Then the policy tests walk every workload of every overlay: resources, security contexts, probes,
the PriorityClass, the NetworkPolicies, and the embedded configuration, which must pass the real
``vigil check-config`` with exactly the environment the pod would get.

No cluster is needed. In CI (``CI=true``) a missing kubectl or kubernetes-validate is a failure,
not a skip.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = ("base", "overlays/dev", "overlays/production", "overlays/production-sharded")
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

NAMESPACE = "vigil"
PRIORITY_CLASS = "vigil-low-priority"
TOKENS_SECRET = "vigil-tokens"
CONFIG_KEY = "vigil.yaml"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
#: Kinds kubernetes-validate has no schema for; checked by test_service_monitors_* instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

#: The peers Vigil may talk to: namespace, pod labels, and the pod ports (not the Service ports).
PEERS = {
    "dns": ("kube-system", {"k8s-app": "kube-dns"}, {53}),
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}, {9090}),
    "alertmanager": ("monitoring", {"app.kubernetes.io/name": "alertmanager"}, {9093}),
    "grafana": ("monitoring", {"app.kubernetes.io/name": "grafana"}, {3000}),
    "loki": ("loki", {"app.kubernetes.io/name": "loki"}, {8080, 3100}),
}
#: Who may reach each component, on which port; and whom each component must reach.
INGRESS = {"query": ({"grafana", "prometheus"}, 8080), "worker": ({"prometheus"}, 9108)}
EGRESS = {"query": {"dns", "prometheus", "loki"},
          "worker": {"dns", "prometheus", "loki", "grafana", "alertmanager"}}
#: Which configuration URL each component uses, and the peer that serves it.
URL_PEERS = {"prometheus": "prometheus", "loki": "loki", "grafana": "grafana", "alertmanager": "alertmanager"}
USES = {"query": {"prometheus", "loki"}, "worker": {"prometheus", "loki", "grafana", "alertmanager"}}


# ---------------------------------------------------------------------------------------------
# Tools: present, or a skip on a laptop and a failure in CI.


def _tool(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (pip install -e '.[test]' / kubectl on PATH)"
    if IN_CI:
        pytest.fail(f"{message}; CI must not skip this test")
    pytest.skip(message)


@functools.cache
def _render(overlay: str) -> tuple[str, tuple[dict[str, Any], ...]]:
    kubectl = _tool("kubectl")
    done = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(done.stdout) if d)
    return done.stdout, docs


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> tuple[dict[str, Any], ...]:
    return _render(overlay)[1]


def _newest_version() -> str | None:
    try:
        from kubernetes_validate.utils import latest_version
    except ImportError:  # the CLI without -k validates against its newest version anyway
        return None
    return latest_version()


# ---------------------------------------------------------------------------------------------
# Helpers over rendered objects.


def _find(docs, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _one(docs, kind: str, name: str) -> dict[str, Any]:
    found = _find(docs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["metadata"].get("labels", {})


def _workloads(docs) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _component(workload: dict[str, Any]) -> str:
    return _pod_labels(workload)["app.kubernetes.io/component"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


_QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(value: Any) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _config_text(docs) -> str:
    (config_map,) = [d for d in _find(docs, "ConfigMap") if d["metadata"]["name"].startswith("vigil-config")]
    return config_map["data"][CONFIG_KEY]


# ---------------------------------------------------------------------------------------------
# Rendering and schema validation.


def test_every_overlay_renders_into_the_vigil_namespace(docs) -> None:
    assert docs, "renders nothing"
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], where
        else:
            assert d["metadata"].get("namespace") == NAMESPACE, f"{where} is not in namespace {NAMESPACE}"
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"
    assert not _find(docs, "Secret"), "no Secret may be rendered: tokens are created by the operator"


@pytest.mark.parametrize("version", ["1.25.0", "newest"])
def test_every_overlay_validates_strictly(overlay: str, version: str, tmp_path: Path) -> None:
    validate = _tool("kubernetes-validate")
    text, docs = _render(overlay)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(text)
    args = [validate, "--strict", str(manifest)]
    wanted = version if version != "newest" else _newest_version()
    if wanted:
        args[1:1] = ["-k", wanted]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in lines if line.startswith(("ERROR", "FATAL"))], done.stdout
    passed = [line for line in lines if line.startswith("INFO") and "passed" in line]
    skipped = [line for line in lines if line.startswith("WARN")]
    crds = [d for d in docs if (d["apiVersion"], d["kind"]) in CRD_KINDS]
    # Everything but the CRD objects was really checked against a schema, none silently skipped.
    assert len(passed) == len(docs) - len(crds), done.stdout
    assert len(skipped) == len(crds), done.stdout
    assert all(any(kind in line for _, kind in CRD_KINDS) for line in skipped), skipped
    if version == "1.25.0":
        assert all(line.endswith("against version 1.25") for line in passed), passed


def test_the_validator_rejects_unknown_fields(tmp_path: Path) -> None:
    """A control: strict validation is really strict, so the test above means something."""
    validate = _tool("kubernetes-validate")
    _, docs = _render("base")
    broken = yaml.safe_load(yaml.safe_dump(_one(docs, "Deployment", "vigil")))
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True  # wrong level
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(broken))
    done = subprocess.run([validate, "--strict", "-k", "1.25.0", str(manifest)], capture_output=True, text=True)
    assert done.returncode != 0 and "readOnlyRootFilesystem" in done.stdout, done.stdout


def test_base_renders_without_any_crd() -> None:
    _, docs = _render("base")
    assert not [d for d in docs if (d["apiVersion"], d["kind"]) in CRD_KINDS]


# ---------------------------------------------------------------------------------------------
# Isolation: every container of every workload in every overlay.


def test_every_workload_runs_below_application_priority(docs) -> None:
    (pc,) = _find(docs, "PriorityClass")
    assert pc["metadata"]["name"] == PRIORITY_CLASS
    assert pc["value"] < 0, "must be below the default priority 0 that application pods get"
    assert pc["value"] > -10, "at or below -10 cluster-autoscaler would never add a node for Vigil"
    assert pc.get("globalDefault") is False
    assert pc.get("preemptionPolicy") == "Never", "Vigil must never evict another pod"
    for w in _workloads(docs):
        assert _pod_spec(w).get("priorityClassName") == PRIORITY_CLASS, w["metadata"]["name"]


def test_every_container_has_requests_and_limits(docs) -> None:
    for w in _workloads(docs):
        for c in _containers(_pod_spec(w)):
            where = f"{w['metadata']['name']}/{c['name']}"
            res = c.get("resources", {})
            for resource in ("cpu", "memory"):
                request = res.get("requests", {}).get(resource)
                limit = res.get("limits", {}).get(resource)
                assert request is not None and limit is not None, f"{where}: {resource} request and limit"
                assert _quantity(request) <= _quantity(limit), f"{where}: {resource} request above limit"


def test_every_container_is_locked_down(docs) -> None:
    for w in _workloads(docs):
        pod = _pod_spec(w)
        name = w["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, f"{name}: API token mounted"
        assert pod.get("serviceAccountName") == "vigil", name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{name}: {host}"
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], f"{name}: hostPath volume"
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        for c in _containers(pod):
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, f"{where}: numeric non-root uid, got {uid!r}"
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where


def test_the_service_account_mounts_no_token(docs) -> None:
    (sa,) = _find(docs, "ServiceAccount")
    assert sa.get("automountServiceAccountToken") is False


def test_every_container_can_write_where_it_must(docs) -> None:
    """Read-only root: /tmp is an emptyDir; the worker's audit store is on a persistent volume."""
    audit_dir = str(Path(yaml.safe_load(_config_text(docs))["audit"]["path"]).parent)
    for w in _workloads(docs):
        pod = _pod_spec(w)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in _containers(pod):
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes.get(mounts.get("/tmp"), {}), f"{w['metadata']['name']}: /tmp"
            if _component(w) == "worker":
                volume = mounts.get(audit_dir)
                assert volume, f"{w['metadata']['name']}: nothing mounted at {audit_dir}"
                assert volume in claims or "persistentVolumeClaim" in volumes.get(volume, {}), \
                    f"{w['metadata']['name']}: the audit store must be on a persistent volume"


def test_every_container_is_probed(docs) -> None:
    for w in _workloads(docs):
        for c in _pod_spec(w)["containers"]:
            where = f"{w['metadata']['name']}/{c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                http = c.get(probe, {}).get("httpGet")
                assert http, f"{where}: {probe}"
                assert http["port"] in ports or http["port"] in ports.values(), f"{where}: {probe} port"
            if _component(w) == "query":
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where


def test_images_are_pinned(docs) -> None:
    for w in _workloads(docs):
        for c in _containers(_pod_spec(w)):
            image = c["image"]
            assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), image
            assert not image.endswith(":latest"), image
    images = {c["image"] for w in _workloads(docs) for c in _containers(_pod_spec(w))}
    assert len(images) == 1, f"one image runs every component; got {sorted(images)}"


def test_no_service_links_and_no_stray_vigil_variables(docs) -> None:
    """The configuration rejects unknown VIGIL_* variables, and Service links would make some.

    A Service called ``vigil`` would give every pod VIGIL_SERVICE_HOST, VIGIL_PORT, ...; see
    test_service_links_would_break_the_configuration for the proof.
    """
    for w in _workloads(docs):
        pod = _pod_spec(w)
        assert pod.get("enableServiceLinks") is False, w["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# The configuration the pods get.


def _container_environment(container: dict[str, Any]) -> dict[str, str]:
    """The variables Kubernetes would set, with stand-ins for secret and downward-API values."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = "test-secret-" + var["valueFrom"]["secretKeyRef"]["key"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = "vigil-worker-0"
        else:
            raise AssertionError(f"unhandled env source {var}")
    assert not container.get("envFrom"), "envFrom would import keys we cannot see here"
    return env


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    vigil = Path(sys.executable).parent / "vigil"
    command = [str(vigil)] if vigil.exists() else [sys.executable, "-m", "vigil.cli"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return subprocess.run([*command, "check-config", str(path)], capture_output=True, text=True,
                          env={**clean, **env}, timeout=120)


def test_the_config_map_passes_check_config_with_each_pods_environment(docs, tmp_path: Path) -> None:
    config = tmp_path / CONFIG_KEY
    config.write_text(_config_text(docs))
    done = _check_config(config, {})
    assert done.returncode == 0, done.stderr
    for w in _workloads(docs):
        for c in _pod_spec(w)["containers"]:
            done = _check_config(config, _container_environment(c))
            assert done.returncode == 0, f"{w['metadata']['name']}/{c['name']}: {done.stderr}"


def test_service_links_would_break_the_configuration(docs, tmp_path: Path) -> None:
    """Why enableServiceLinks is off: the variables Kubernetes would inject for our Services."""
    config = tmp_path / CONFIG_KEY
    config.write_text(_config_text(docs))
    links: dict[str, str] = {}
    for svc in _find(docs, "Service"):
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        links[f"{prefix}_SERVICE_HOST"] = "10.0.0.1"
        links[f"{prefix}_PORT"] = f"tcp://10.0.0.1:{svc['spec']['ports'][0]['port']}"
    done = _check_config(config, links)
    assert done.returncode != 0 and "VIGIL_" in done.stderr, done.stderr


def test_every_pod_runs_the_config_it_mounts(docs) -> None:
    for w in _workloads(docs):
        pod = _pod_spec(w)
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            argv = " ".join(c.get("command", []) + c.get("args", []))
            match = re.search(r"--config[ =](\S+)", argv)
            assert match, f"{w['metadata']['name']}: no --config"
            path = Path(match.group(1))
            mount = next(m for m in c["volumeMounts"] if Path(m["mountPath"]) == path.parent)
            assert mount.get("readOnly") is True
            config_map = volumes[mount["name"]]["configMap"]["name"]
            assert config_map.startswith("vigil-config-"), "the hashed name, so a change rolls the pods"
            assert _find(docs, "ConfigMap", config_map) and path.name == CONFIG_KEY


def test_all_traffic_stays_in_the_cluster(docs) -> None:
    config = yaml.safe_load(_config_text(docs))
    for section in URL_PEERS:
        host = urlsplit(config[section]["url"]).hostname or ""
        assert re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+\.svc(\.cluster\.local)?", host), \
            f"{section}.url must be a cluster Service name <service>.<namespace>.svc; got {host}"


# ---------------------------------------------------------------------------------------------
# References between objects resolve.


def test_every_reference_resolves(docs) -> None:
    example = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    secret_keys = set(example["stringData"])
    for w in _workloads(docs):
        pod = _pod_spec(w)
        name = w["metadata"]["name"]
        assert _find(docs, "ServiceAccount", pod["serviceAccountName"]), name
        assert _find(docs, "PriorityClass", pod["priorityClassName"]), name
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        volume_names = {v["name"] for v in pod["volumes"]} | claims
        for v in pod["volumes"]:
            if "configMap" in v:
                assert _find(docs, "ConfigMap", v["configMap"]["name"]), f"{name}: {v}"
            if "persistentVolumeClaim" in v:
                assert _find(docs, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]), f"{name}: {v}"
            assert "secret" not in v or v["secret"]["secretName"] == TOKENS_SECRET
        for c in _containers(pod):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volume_names, f"{name}: mount {m['name']}"
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    # The operator creates this Secret; the template documents exactly these keys.
                    assert ref["name"] == TOKENS_SECRET == example["metadata"]["name"], f"{name}: {ref}"
                    assert ref["key"] in secret_keys, f"{name}: {ref}"
                    assert not ref.get("optional"), f"{name}: a missing token must stop the pod"


def test_every_service_reaches_a_named_container_port(docs) -> None:
    workloads = _workloads(docs)
    for svc in _find(docs, "Service"):
        backends = [w for w in workloads if _selects({"matchLabels": svc["spec"]["selector"]}, _pod_labels(w))]
        assert backends, f"Service {svc['metadata']['name']} selects no workload"
        for w in backends:
            ports = {p["name"] for c in _pod_spec(w)["containers"] for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{svc['metadata']['name']} -> {w['metadata']['name']}"


def test_the_datasource_address_is_vigil_vigil_svc_8080(docs) -> None:
    svc = _one(docs, "Service", "vigil")
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "query"
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]


def test_service_monitors_scrape_both_components(overlay: str) -> None:
    """The CRD check kubernetes-validate cannot do: a ServiceMonitor that selects nothing, or names
    a port its Service lacks, is accepted by the API server and then silently scrapes nothing."""
    _, docs = _render(overlay)
    monitors = _find(docs, "ServiceMonitor")
    if overlay in ("base", "overlays/dev"):
        assert not monitors
        return
    covered = set()
    for sm in monitors:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "kube-prometheus-stack selects on it"
        assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, sm["spec"]
        services = [s for s in _find(docs, "Service") if _selects(sm["spec"]["selector"], s["metadata"]["labels"])]
        assert services, f"ServiceMonitor {sm['metadata']['name']} selects no Service"
        for endpoint in sm["spec"]["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels"}, endpoint
            if sm["metadata"]["name"] == "vigil-worker":
                # vigil_anomaly_score carries the watched series' own job/instance labels.
                assert endpoint.get("honorLabels") is True
            assert endpoint["path"] == "/metrics"
            for s in services:
                assert endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
                covered.add(s["metadata"]["name"])
    assert covered == {s["metadata"]["name"] for s in _find(docs, "Service")}


# ---------------------------------------------------------------------------------------------
# Workload shapes: one worker per shard; production is redundant, dev is small.


def test_one_worker_per_shard(docs, tmp_path: Path) -> None:
    workers = [w for w in _workloads(docs) if _component(w) == "worker"]
    assert len(workers) == 1, "exactly one worker workload (the Deployment or the sharded StatefulSet)"
    (w,) = workers
    if w["kind"] == "Deployment":
        assert w["spec"]["replicas"] == 1
        assert w["spec"]["strategy"]["type"] == "Recreate", "old and new pod must never share the audit store"
        return
    assert w["kind"] == "StatefulSet"
    assert w["spec"]["serviceName"] == "vigil-worker" and _find(docs, "Service", "vigil-worker")
    (c,) = _pod_spec(w)["containers"]
    env = _container_environment(c)
    assert env["SHARD_COUNT"] == str(w["spec"]["replicas"]), "SHARD_COUNT must equal replicas"
    pod_name_ref = next(v for v in c["env"] if v["name"] == "POD_NAME")
    assert pod_name_ref["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Run the real wrapper under /bin/sh with a stand-in `vigil` that prints its arguments.
    fake = tmp_path / "vigil"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    for ordinal in range(w["spec"]["replicas"]):
        env_now = {**env, "POD_NAME": f"{w['metadata']['name']}-{ordinal}", "PATH": f"{tmp_path}:/usr/bin:/bin"}
        done = subprocess.run(c["command"], capture_output=True, text=True, env=env_now, timeout=30)
        assert done.returncode == 0, done.stderr
        args = done.stdout.split()
        assert args[0] == "worker"
        assert args[args.index("--shard-index") + 1] == str(ordinal)
        assert args[args.index("--shard-count") + 1] == str(w["spec"]["replicas"])


def test_production_is_redundant_and_bounded() -> None:
    for overlay in ("overlays/production", "overlays/production-sharded"):
        _, docs = _render(overlay)
        query = _one(docs, "Deployment", "vigil")
        labels = _pod_labels(query)
        assert query["spec"]["replicas"] >= 2
        hpa = _one(docs, "HorizontalPodAutoscaler", "vigil")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vigil"}
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] <= 10
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        pdb = _one(docs, "PodDisruptionBudget", "vigil")
        assert _selects(pdb["spec"]["selector"], labels) and pdb["spec"]["minAvailable"] == 1
        spread = _pod_spec(query)["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spread} >= {"kubernetes.io/hostname"}
        assert all(_selects(s["labelSelector"], labels) for s in spread)
        workers = [w for w in _workloads(docs) if _component(w) == "worker"]
        assert not [p for p in _find(docs, "PodDisruptionBudget") if _selects(p["spec"]["selector"], _pod_labels(workers[0]))]


def test_dev_is_one_small_replica() -> None:
    _, dev = _render("overlays/dev")
    _, prod = _render("overlays/production")
    assert _one(dev, "Deployment", "vigil")["spec"]["replicas"] == 1
    assert not _find(dev, "HorizontalPodAutoscaler")
    for name in ("vigil", "vigil-worker"):
        small = _pod_spec(_one(dev, "Deployment", name))["containers"][0]["resources"]["limits"]
        large = _pod_spec(_one(prod, "Deployment", name))["containers"][0]["resources"]["limits"]
        for resource in ("cpu", "memory"):
            assert _quantity(small[resource]) < _quantity(large[resource]), f"{name} {resource}"


# ---------------------------------------------------------------------------------------------
# NetworkPolicies: in only from Grafana and Prometheus, out only to the monitoring stack and DNS.


def _peer_name(peer: dict[str, Any]) -> str:
    """Which of PEERS a NetworkPolicy peer is; fails on anything broader."""
    assert set(peer) == {"namespaceSelector", "podSelector"}, f"peer must name a namespace AND pods: {peer}"
    ns = peer["namespaceSelector"].get("matchLabels", {})
    pods = peer["podSelector"].get("matchLabels", {})
    assert set(peer["namespaceSelector"]) == {"matchLabels"} and set(peer["podSelector"]) == {"matchLabels"}, peer
    for name, (namespace, labels, _) in PEERS.items():
        if ns == {"kubernetes.io/metadata.name": namespace} and pods == labels:
            return name
    raise AssertionError(f"peer is not one of {sorted(PEERS)}: {peer}")


def _policies_for(docs, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in _find(docs, "NetworkPolicy") if _selects(p["spec"]["podSelector"], labels)]


def _allowed(policies, direction: str) -> dict[str, set[int]]:
    """peer name -> ports, for 'ingress' or 'egress' rules; every rule must name peers and ports."""
    out: dict[str, set[int]] = {}
    key = "from" if direction == "ingress" else "to"
    for policy in policies:
        for rule in policy["spec"].get(direction, []):
            assert rule.get(key) and rule.get("ports"), f"{policy['metadata']['name']}: open {direction} rule"
            for peer in rule[key]:
                name = _peer_name(peer)
                out.setdefault(name, set()).update(int(p["port"]) for p in rule["ports"])
    return out


def test_everything_not_allowed_is_denied(docs) -> None:
    deny = _one(docs, "NetworkPolicy", "vigil-default-deny")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")
    for w in _workloads(docs):
        types = {t for p in _policies_for(docs, _pod_labels(w)) for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, w["metadata"]["name"]


def test_ingress_only_from_grafana_and_prometheus(docs) -> None:
    for w in _workloads(docs):
        allowed = _allowed(_policies_for(docs, _pod_labels(w)), "ingress")
        peers, port = INGRESS[_component(w)]
        assert allowed == {peer: {port} for peer in peers}, f"{w['metadata']['name']}: {allowed}"
        exposed = {p["containerPort"] for c in _pod_spec(w)["containers"] for p in c.get("ports", [])}
        assert exposed == {port}, "every exposed port is reachable by exactly the intended peers"


def test_egress_only_to_the_monitoring_stack_and_dns(docs) -> None:
    for w in _workloads(docs):
        allowed = _allowed(_policies_for(docs, _pod_labels(w)), "egress")
        wanted = {name: PEERS[name][2] for name in EGRESS[_component(w)]}
        assert allowed == wanted, f"{w['metadata']['name']}: {allowed}"
    for p in _find(docs, "NetworkPolicy"):
        for rule in p["spec"].get("egress", []):
            for peer in rule["to"]:
                assert "ipBlock" not in peer


def test_the_policies_allow_the_addresses_in_the_config(docs) -> None:
    """vigil.yaml and networkpolicies.yaml name the same namespaces (the two places to edit)."""
    config = yaml.safe_load(_config_text(docs))
    for w in _workloads(docs):
        allowed = _allowed(_policies_for(docs, _pod_labels(w)), "egress")
        for section in USES[_component(w)]:
            url = config[section].get("url")
            if not url:
                continue
            host = urlsplit(url).hostname or ""
            with pytest.raises(ValueError):
                ipaddress.ip_address(host)  # a name, so that DNS (allowed) resolves it
            namespace = host.split(".")[1]
            peer = URL_PEERS[section]
            assert PEERS[peer][0] == namespace, f"{section}.url is in {namespace}; the policy allows {PEERS[peer][0]}"
            assert peer in allowed, f"{w['metadata']['name']} may not reach {section}"


# ---------------------------------------------------------------------------------------------
# The Secret template and the operator's guide.


def test_the_secret_template_holds_no_value_and_is_never_applied() -> None:
    example = K8S / "base" / "secret.example.yaml"
    secret = yaml.safe_load(example.read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == TOKENS_SECRET
    assert "data" not in secret
    assert all(v.startswith("REPLACE-") for v in secret["stringData"].values())
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not [r for r in listed if "secret" in r], kustomization


def test_the_guide_creates_the_secret_the_pods_read() -> None:
    guide = (REPO / "docs" / "kubernetes.md").read_text()
    assert f"create secret generic {TOKENS_SECRET}" in guide
    for key in yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())["stringData"]:
        assert key in guide
    for overlay in OVERLAYS[1:]:
        assert f"k8s/{overlay}" in guide
    assert "http://vigil.vigil.svc:8080/prometheus" in guide  # the plugin-free datasource
