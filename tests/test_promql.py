import pytest

from vigil.promql import inject_matchers

M = [("job", "=", "api")]


@pytest.mark.parametrize("expr, expected", [
    ("up", 'up{job="api"}'),
    ("rate(http_requests_total[5m])", 'rate(http_requests_total{job="api"}[5m])'),
    ('sum by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))',
     'sum by (instance) (rate(node_cpu_seconds_total{mode="idle",job="api"}[5m]))'),
    ("sum(rate(x[1m])) by (a)", 'sum(rate(x{job="api"}[1m])) by (a)'),
    ("1 - a / b", '1 - a{job="api"} / b{job="api"}'),
    ('{__name__="up"}', '{__name__="up",job="api"}'),
    ("x offset 5m", 'x{job="api"} offset 5m'),
    ("a and on(instance) b", 'a{job="api"} and on(instance) b{job="api"}'),
    ('histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))',
     'histogram_quantile(0.9, sum by (le) (rate(h_bucket{job="api"}[5m])))'),
    ('x{a="}"}', 'x{a="}",job="api"}'),
])
def test_matchers_reach_every_selector(expr, expected):
    assert inject_matchers(expr, M) == expected


def test_values_are_escaped_and_names_validated():
    assert inject_matchers("up", [("job", "=~", 'a"b')]) == 'up{job=~"a\\"b"}'
    with pytest.raises(ValueError):
        inject_matchers("up", [("bad-label", "=", "x")])
    with pytest.raises(ValueError):
        inject_matchers("up", [("job", "<", "x")])


def test_no_matchers_leaves_the_expression_alone():
    assert inject_matchers("rate(x[5m])", []) == "rate(x[5m])"
