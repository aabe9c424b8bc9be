"""Named queries for the brief's cases, so a panel can say ``node_cpu_usage`` instead of PromQL.

Each preset has a unit (Grafana unit id) and the labels that name its series. Expressions use
node_exporter and kube-state-metrics/cAdvisor metric names.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Preset", "PRESETS", "resolve"]


class Preset(NamedTuple):
    name: str
    expr: str
    unit: str | None
    legend: str
    description: str
    source: str = "prometheus"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("node_cpu_usage",
               '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))',
               "percentunit", "{{instance}}", "CPU busy ratio per node (node_exporter)"),
        Preset("node_memory_usage",
               "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
               "percentunit", "{{instance}}", "memory in use ratio per node (node_exporter)"),
        Preset("node_load1", "node_load1", "short", "{{instance}}", "1-minute load average per node"),
        Preset("pod_cpu_usage",
               'sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{container!=""}[5m]))',
               "short", "{{namespace}}/{{pod}}", "CPU cores used per pod (cAdvisor)"),
        Preset("pod_memory_usage",
               'sum by (namespace, pod) (container_memory_working_set_bytes{container!=""})',
               "bytes", "{{namespace}}/{{pod}}", "working-set memory per pod (cAdvisor)"),
        Preset("pod_restarts",
               "sum by (namespace, pod) (increase(kube_pod_container_status_restarts_total[5m]))",
               "short", "{{namespace}}/{{pod}}", "container restarts per pod in 5 minutes (kube-state-metrics)"),
        Preset("pods_not_ready",
               'sum by (namespace) (kube_pod_status_ready{condition="false"})',
               "short", "{{namespace}}", "pods not ready per namespace (kube-state-metrics)"),
        Preset("log_errors",
               'sum by (app) (count_over_time({app=~".+"} |~ "(?i)error" [5m]))',
               "short", "{{app}}", "error log lines per app in 5 minutes (Loki)", source="loki"),
    )
}


def resolve(target: str) -> tuple[str, Preset | None]:
    """A preset name -> its expression and preset; anything else is taken as PromQL/LogQL."""
    name = target.strip()
    preset = PRESETS.get(name)
    return (preset.expr, preset) if preset else (name, None)
