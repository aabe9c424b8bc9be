"""Why an answer is empty: the notice tells a typo from a metric without history yet."""

from __future__ import annotations

from vigil.sources.emptiness import why_empty
from vigil.errors import UpstreamUnavailable

START_MS, END_MS = 1_704_067_200_000, 1_704_070_800_000


class Names:
    """Stands in for a Prometheus client: knows some metric names, or fails."""

    def __init__(self, known: set[str] | None) -> None:
        self.known = known

    def label_values(self, label, match=(), start_s=None, end_s=None):
        assert label == "__name__"
        if self.known is None:
            raise UpstreamUnavailable("Prometheus is down")
        return sorted(set(match) & self.known)


def test_an_unknown_metric_is_called_a_possible_typo():
    text = why_empty("node_cpu_usge", START_MS, END_MS, client=Names({"node_cpu_seconds_total"}))
    assert text.startswith("no series matched node_cpu_usge from 2024-01-01 00:00 UTC to 2024-01-01 01:00 UTC")
    assert "no metric named node_cpu_usge" in text and "typo" in text


def test_a_known_metric_without_samples_is_no_history_yet_and_names_the_preset():
    expr = '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))'
    text = why_empty(expr, START_MS, END_MS, shown_as="node_cpu_usage", client=Names({"node_cpu_seconds_total"}))
    assert text.startswith(f"no series matched node_cpu_usage ({expr})")
    assert "node_cpu_seconds_total exists but has no samples in this range yet" in text


def test_without_prometheus_the_notice_names_both_causes():
    for client in (None, Names(None)):
        text = why_empty("x", START_MS, END_MS, client=client)
        assert "typo" in text and "history" in text
