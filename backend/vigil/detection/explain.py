"""A short reason a person can act on, for each episode, in plain words.

``"node-1 at 81.2%, about 1.6x the expected 52.3% for a weekday (Tuesday) at 14:00 UTC (usual
range 41.2% to 63.4%; anomaly score 1.30 where 1.0 is the threshold, model iforest)"``. It says
what was measured (the series' name, which carries the metric name when the query keeps it), the
value and the expectation in the series' unit with readable large numbers (``display.py``), how
far apart they are as a plain ratio (no "spread" jargon), and for which moment. When the peak is
inside the usual range (flagged for a sustained shift, a volatility burst or a stuck value rather
than one value), the reason says so.

Must not: link anywhere (alerts and annotations add the panel link where one is configured).
"""

from __future__ import annotations

import math

from vigil.display import format_value  # re-exported: the one value formatter
from vigil.detection.episodes import Episode

__all__ = ["explain", "compare", "format_value"]

#: below this ratio between value and expectation, "about 1.2x" says less than "above"
_PLAIN_RATIO = 1.5


def compare(value: float, expected: float, unit: str | None = None) -> str:
    """``"about 5x the expected 1.2 req/s"``, ``"about 40% of the expected 3 GiB"``, or
    ``"above the expected 52%"`` when a ratio would not help (close values, zero or negative ones)."""
    shown = format_value(expected, unit)
    if not (math.isfinite(value) and math.isfinite(expected)):
        return f"against the expected {shown}"
    if value > 0 and expected > 0:
        ratio = value / expected
        if ratio >= _PLAIN_RATIO:
            times = "over 1000x" if ratio >= 1000 else f"about {_ratio_text(ratio)}x"
            return f"{times} the expected {shown}"
        if ratio <= 1 / _PLAIN_RATIO:
            if ratio < 0.01:
                return f"almost nothing of the expected {shown}"
            return f"about {ratio * 100:.2g}% of the expected {shown}"
    return f"{'above' if value >= expected else 'below'} the expected {shown}"


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.1f}".removesuffix(".0") if ratio < 3 else f"{ratio:.0f}"


def explain(episode: Episode, detector, *, unit: str | None = None, series: str | None = None) -> str:
    """The reason for one episode, from its peak and the detector that scored it."""
    value, expected = episode.peak_value, episode.yhat
    context = detector.context(episode.peak_ms)
    when = f" {context}" if context else ""
    usual = f"usual range {format_value(episode.yhat_lower, unit)} to {format_value(episode.yhat_upper, unit)}"
    score = f"anomaly score {episode.peak_score:.2f} where 1.0 is the threshold, model {detector.name}"
    what = f"{series} at {format_value(value, unit)}" if series else f"Value {format_value(value, unit)}"
    if episode.yhat_lower <= value <= episode.yhat_upper:
        # Inside the range a single value is not the evidence: the recent pattern is (a sustained
        # shift, a burst of volatility, a series stuck on one value). Say so, or the reason reads wrong.
        return (f"{what}, inside its {usual}{when} but flagged for its recent pattern (a sustained shift, "
                f"volatility or a stuck value); expected {format_value(expected, unit)}; {score}")
    return f"{what}, {compare(value, expected, unit)}{when} ({usual}; {score})"
