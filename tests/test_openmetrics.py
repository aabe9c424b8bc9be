"""OpenMetrics text: format rules, and a real promtool backfill that Prometheus then serves."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from realstack import PROMTOOL, require_binary
from vigil_dev.openmetrics import escape_label_value, format_value, to_openmetrics


def test_format_of_one_family():
    text = to_openmetrics([
        ("cpu_ratio", [({"instance": "a", "job": "node"}, np.array([1_000, 61_500]), np.array([0.5, np.nan])),
                       ({"instance": "b"}, np.array([1_000, 61_500]), np.array([1.0, 2.0]))]),
    ])
    assert text.splitlines() == [
        "# TYPE cpu_ratio gauge",
        'cpu_ratio{instance="a",job="node"} 0.5 1',
        'cpu_ratio{instance="b"} 1.0 1',
        'cpu_ratio{instance="b"} 2.0 61.500',
        "# EOF",
    ]
    assert text.endswith("# EOF\n")


def test_escaping_and_special_values():
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"
    assert format_value(1e-7) == "1e-07"


def test_unlabelled_series_and_name_label():
    text = to_openmetrics([("up", [({"__name__": "up"}, np.array([5_000]), np.array([1.0]))])])
    assert "up 1.0 5\n" in text


@pytest.mark.parametrize(
    "families, message",
    [
        ([("bad-name", [])], "invalid metric name"),
        ([("m", []), ("m", [])], "given twice"),
        ([("m", [({"a": "1"}, np.array([1, 2]), np.array([1.0, 2.0])),
                 ({"a": "1"}, np.array([3]), np.array([1.0]))])], "given twice"),
        ([("m", [({"a": "1"}, np.array([2, 1]), np.array([1.0, 2.0]))])], "strictly increasing"),
        ([("m", [({"0a": "1"}, np.array([1]), np.array([1.0]))])], "invalid label name"),
        ([("m", [({"a": "1"}, np.array([1, 2]), np.array([1.0]))])], "one length"),
    ],
)
def test_invalid_input_is_refused(families, message):
    with pytest.raises(ValueError, match=message):
        to_openmetrics(families)


@pytest.mark.real
def test_promtool_round_trip(tmp_path, prometheus_factory):
    """promtool accepts the text (NaN gaps, escaped labels, two families) and Prometheus serves it."""
    promtool = require_binary(PROMTOOL)
    end_ms = (int(time.time()) // 60 - 2) * 60_000
    times_ms = end_ms - np.arange(720)[::-1] * 60_000
    values = np.sin(np.arange(720) / 30.0)
    values[100:110] = np.nan
    families = [
        ("vigil_om_test", [({"instance": 'we"ird\\one'}, times_ms, values),
                           ({"instance": "plain"}, times_ms, values * 2)]),
        ("vigil_om_other_total", [({}, times_ms, np.arange(720, dtype=float))]),
    ]
    text = to_openmetrics(families)
    path = tmp_path / "data.om"
    path.write_text(text)
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(path), str(tmp_path / "blocks")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr

    prometheus = prometheus_factory(openmetrics=text)
    start_s, end_s = times_ms[0] // 1000, times_ms[-1] // 1000
    body = prometheus.get_json("/api/v1/query_range", query='vigil_om_test{instance="plain"}',
                               start=start_s, end=end_s, step=60)
    returned = body["data"]["result"][0]["values"]
    got = {int(t): float(v) for t, v in returned}
    assert got[int(start_s)] == pytest.approx(values[0] * 2)
    assert got[int(end_s)] == pytest.approx(values[-1] * 2)
    # The 10-minute NaN gap is missing samples: the 5-minute lookback bridges half of it only.
    gap_s = [int(t // 1000) for t in times_ms[100:110]]
    assert any(t not in got for t in gap_s)

    body = prometheus.get_json("/api/v1/series", **{"match[]": "vigil_om_test", "start": start_s, "end": end_s})
    assert {s["instance"] for s in body["data"]} == {'we"ird\\one', "plain"}
    body = prometheus.get_json("/api/v1/query", query="vigil_om_other_total", time=end_s)
    assert float(body["data"]["result"][0]["value"][1]) == 719.0
