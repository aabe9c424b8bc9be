"""Aggregations and comparisons around an anomaly function: parsing, and Prometheus' semantics.

The end-to-end half (a real Prometheus, the same numbers as the function alone, promtool) is in
``tests/test_prometheus_api.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from vigil.pipeline.promql_functions import AnomalyCall
from vigil.pipeline.promql_outer import Aggregate, Compare, VectorSeries, anomaly_call, evaluate, parse_query

CALL = AnomalyCall("anomaly_score", "rate(x[5m])", {"model": "seasonal"})
INNER = 'anomaly_score(rate(x[5m]), "model=seasonal")'


@pytest.mark.parametrize("text, expected", [
    (INNER, CALL),
    (f"(({INNER}))", CALL),
    (f"{INNER} > 1", Compare(">", 1.0, CALL, False)),
    (f"1 < bool {INNER}", Compare(">", 1.0, CALL, True)),
    (f"{INNER} >= 1e0", Compare(">=", 1.0, CALL, False)),
    (f"sum({INNER})", Aggregate("sum", (), False, CALL)),
    (f"max by (instance, job) ({INNER})", Aggregate("max", ("instance", "job"), False, CALL)),
    (f"avg({INNER}) without (pod)", Aggregate("avg", ("pod",), True, CALL)),
    ("count(is_anomaly(up) == 1)",
     Aggregate("count", (), False, Compare("==", 1.0, AnomalyCall("is_anomaly", "up", {}), False))),
    (f"max by (instance) ({INNER}) > 1", Compare(">", 1.0, Aggregate("max", ("instance",), False, CALL), False)),
])
def test_outer_layers_are_parsed(text, expected):
    assert parse_query(text) == expected
    assert anomaly_call(parse_query(text)) == anomaly_call(expected)


@pytest.mark.parametrize("text", ["rate(x[5m]) > 1", "sum by (a) (x)", 'x{a="anomaly_score(y)"}', "# anomaly_score(x)\nup"])
def test_plain_promql_is_not_ours(text):
    assert parse_query(text) is None


@pytest.mark.parametrize("text, needle", [
    (f"abs({INNER})", "abs(...) around an anomaly function is not supported"),
    (f"{INNER} * 100", "only by a comparison with a number"),
    (f"{INNER} > up", "with a number"),
    (f"{INNER} > 1 < 2", "one comparison at most"),
    (f"topk(3, {INNER})", "topk(...)"),
    (f"sum({INNER}, 2)", "one argument"),
    (f"sum by (in-stance) ({INNER})", "not a label name"),
    (f"sum by (a) ({INNER}) by (b)", "unexpected"),
    (f"{INNER} = 1", "unexpected '='"),
    ("sum(" * 9 + INNER + ")" * 9, "more than 8"),
    ("sum(" * 3000 + INNER + ")" * 3000, "more than 8"),
])
def test_what_is_not_supported_says_what_is(text, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        parse_query(text)


def _series(labels: dict[str, str], values: list[float]) -> VectorSeries:
    return VectorSeries(labels, np.arange(len(values), dtype=np.int64) * 60_000, np.array(values, dtype=float))


NAN = float("nan")
SERIES = [
    _series({"instance": "a", "job": "j"}, [0.5, 1.5, NAN, 2.0]),
    _series({"instance": "b", "job": "j"}, [0.2, 0.1, 3.0, NAN]),
    _series({"instance": "c", "job": "k"}, [NAN, 1.0, 1.0, NAN]),
]


def _by_labels(out: list[VectorSeries]) -> dict[tuple, list[float]]:
    return {tuple(sorted(s.labels.items())): [None if np.isnan(v) else float(v) for v in s.values] for s in out}


def test_aggregations_skip_series_without_a_sample_at_a_step():
    def agg(op: str, labels: tuple[str, ...] = (), without: bool = False):
        return _by_labels(evaluate(Aggregate(op, labels, without, CALL), SERIES))

    assert agg("sum") == {(): [0.7, 2.6, 4.0, 2.0]}
    assert agg("count") == {(): [2.0, 3.0, 2.0, 1.0]}
    assert agg("min") == {(): [0.2, 0.1, 1.0, 2.0]}
    assert agg("max", ("job",)) == {(("job", "j"),): [0.5, 1.5, 3.0, 2.0], (("job", "k"),): [None, 1.0, 1.0, None]}
    assert agg("avg", ("instance",), True) == {(("job", "j"),): [0.35, 0.8, 3.0, 2.0],
                                                (("job", "k"),): [None, 1.0, 1.0, None]}
    assert agg("sum", ("nope",)) == {(): [0.7, 2.6, 4.0, 2.0]}  # a by label no series has: one group


def test_comparisons_filter_or_say_bool():
    kept = _by_labels(evaluate(Compare(">=", 1.0, CALL, False), SERIES))
    assert kept[(("instance", "a"), ("job", "j"))] == [None, 1.5, None, 2.0]
    assert kept[(("instance", "b"), ("job", "j"))] == [None, None, 3.0, None]
    as_bool = _by_labels(evaluate(Compare(">=", 1.0, CALL, True), SERIES))
    assert as_bool[(("instance", "a"), ("job", "j"))] == [0.0, 1.0, None, 1.0]  # no sample stays none
    # Layers compose inside out: the count of series at or above 1 per step.
    counted = evaluate(Aggregate("count", (), False, Compare(">=", 1.0, CALL, False)), SERIES)
    assert _by_labels(counted) == {(): [None, 2.0, 2.0, 1.0]}


def test_aggregating_nothing_is_nothing():
    assert evaluate(Aggregate("sum", (), False, CALL), []) == []
