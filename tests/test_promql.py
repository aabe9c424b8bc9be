import pytest

from vigil.sources.promql import balance_problem, inject_matchers, metric_names

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


@pytest.mark.parametrize("expr, names", [
    ('1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))', ["node_cpu_seconds_total"]),
    ("node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
     ["node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes"]),
    ('sum(rate(x{a="y"}[5m] offset 1h)) / on (job) group_left y', ["x", "y"]),
    ('{job="api"}', []),
])
def test_metric_names_are_the_selected_metrics(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr, problem", [
    ("rate(x[5m]", "'(' at character 5 is never closed"),
    ("rate(x[5m]))", "')' at character 12 closes nothing"),
    ("sum(rate(x[5m)])", "')' at character 14 does not match '[' at character 11"),
    ('x{a="b}', 'the string opened by " at character 5 is never closed'),
    ('x{path=~"/a(b"}', None),  # brackets inside strings do not count
    ('x{a="\\""}', None),
    ("sum by (job) (rate(x[5m]))", None),
])
def test_balance_problem_names_the_first_unbalanced_character(expr, problem):
    assert balance_problem(expr) == problem
