import pytest

from vigil.units import format_duration, iso_from_ms, parse_duration_s, parse_instant_ms, parse_time_ms, query_step_s


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800), ("1w", 604800), ("250ms", 0.25), (90, 90),
    ("15", 15), ("1.5h", 5400),
])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5x", "m5", "-5m", "1h-", True, float("nan"), -1])
def test_bad_durations_are_rejected_with_an_example(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(bad)


def test_format_duration_round_trips_whole_seconds():
    for seconds in (1, 59, 60, 3600, 5400, 86400, 7 * 86400 + 3661):
        assert parse_duration_s(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value, ms", [
    ("2026-01-01T00:00:00Z", 1767225600000),
    ("2026-01-01T00:00:00.250Z", 1767225600250),
    ("2026-01-01T01:00:00+01:00", 1767225600000),
    (1767225600, 1767225600000),           # epoch seconds
    (1767225600000, 1767225600000),        # epoch ms
    ("1767225600.5", 1767225600500),
])
def test_instants_from_iso_seconds_and_milliseconds(value, ms):
    assert parse_instant_ms(value) == ms


def test_iso_output_is_rfc3339_utc():
    assert iso_from_ms(1767225600250) == "2026-01-01T00:00:00.250000Z"


def test_step_follows_grafana_and_is_clamped_to_prometheus_limit():
    # 12 h at maxDataPoints 720 and a 30 s interval: range/points = 60 s wins.
    assert query_step_s(12 * 3600, interval_ms=30_000, max_data_points=720) == 60
    # The interval wins when it is larger.
    assert query_step_s(3600, interval_ms=120_000, max_data_points=720) == 120
    # A year at a 1 s interval with no maxDataPoints: raised so one series has <= 11,000 points.
    step = query_step_s(365 * 86400, interval_ms=1000)
    assert 365 * 86400 / step <= 11_000
    # Never below one second.
    assert query_step_s(10, interval_ms=1, max_data_points=10_000) == 1


def test_request_times_accept_grafanas_relative_form():
    now_ms = 1_700_000_000_000
    assert parse_time_ms("now", now_ms=now_ms) == now_ms
    assert parse_time_ms("now-1h", now_ms=now_ms) == now_ms - 3_600_000
    assert parse_time_ms("now - 30m", now_ms=now_ms) == now_ms - 1_800_000
    assert parse_time_ms("now+5m", now_ms=now_ms) == now_ms + 300_000
    assert parse_time_ms("2023-11-14T22:13:20Z") == now_ms
    assert parse_time_ms(now_ms) == now_ms
    with pytest.raises(ValueError, match="now-6h"):
        parse_time_ms("now-soon", now_ms=now_ms)
    with pytest.raises(ValueError, match="now-6h"):
        parse_time_ms("yesterday")
