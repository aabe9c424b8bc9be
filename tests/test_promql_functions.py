"""Recognising the anomaly functions in PromQL text (pure: no Flask, no Prometheus)."""

from __future__ import annotations

import pytest

from vigil.pipeline.promql_functions import FUNCTIONS, AnomalyCall, mentions_anomaly_function, parse_anomaly_call


@pytest.mark.parametrize("text", [
    "up", "rate(node_cpu_seconds_total[5m])", 'x{job="anomaly_score(x)"}', "sum by (yhat) (x)",
    "my_yhat_total", "x # anomaly_score(x)\n", "1+1",
])
def test_plain_promql_is_not_an_anomaly_call(text):
    assert parse_anomaly_call(text) is None
    assert not mentions_anomaly_function(text)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_is_recognised_with_its_inner_expression(function):
    text = f' {function} ( sum by (instance) (rate(x{{path="/a,b(c"}}[$__rate_interval])) ) '
    assert parse_anomaly_call(text) == AnomalyCall(function, 'sum by (instance) (rate(x{path="/a,b(c"}[$__rate_interval]))', {})


def test_optional_string_arguments():
    call = parse_anomaly_call("""anomaly_score(up, "model=seasonal", 'sensitivity = low', `train_window=14d`)""")
    assert call.options == {"model": "seasonal", "sensitivity": "low", "train_window": "14d"}


@pytest.mark.parametrize("text, needle", [
    ("sum(anomaly_score(x))", "outermost"),
    ("anomaly_score(x) > 1", "only by a comparison with a number"),
    ("anomaly_score(x) by (job)", "only by a comparison with a number"),
    ("anomaly_score(yhat(x))", "cannot be nested"),
    ("anomaly_score()", "needs a PromQL expression"),
    ("anomaly_score(x, model)", "strings such as"),
    ('anomaly_score(x, "model=")', "name=value"),
    ('anomaly_score(x, "step=5m")', "model, sensitivity, train_window"),
    ('anomaly_score(x, "model=a", "model=b")', "twice"),
    ("anomaly_score(x", "never closed"),
    ("anomaly_score(x])", "unbalanced"),
])
def test_mistakes_get_a_sentence_naming_them(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_anomaly_call(text)
