"""A short reason a person can act on, for each episode.

``"0.81 is 4.3x the usual spread above the expected 0.33 for Tuesday 14:00 UTC (band 0.21-0.45)"``.
Values are formatted with the series' unit where it is known. When the peak is inside the band
(flagged for a sustained shift, a volatility burst or a stuck value rather than one value), the
reason says so.
"""

from __future__ import annotations

import math

from .display import format_value  # re-exported: the one value formatter
from .episodes import Episode

__all__ = ["explain", "format_value"]


def explain(episode: Episode, detector, *, unit: str | None = None, series: str | None = None) -> str:
    """The reason for one episode, from its peak and the detector that scored it."""
    value, expected = episode.peak_value, episode.yhat
    spread = detector.spread_at(episode.peak_ms)
    direction = "above" if value >= expected else "below"
    ratio = abs(value - expected) / spread if spread > 0 else math.inf
    context = detector.context(episode.peak_ms)
    ratio_text = f"{ratio:.1f}x" if math.isfinite(ratio) and ratio < 1000 else "far beyond"
    inside = episode.yhat_lower <= value <= episode.yhat_upper
    # Inside the band, a single value is not the evidence: the recent pattern is (a sustained
    # shift, a burst of volatility, a series stuck on one value). Say so, or the reason reads wrong.
    pattern = ("; inside the band, flagged for the recent pattern (sustained shift, volatility or a "
               "stuck value)" if inside else "")
    text = (f"{format_value(value, unit)} is {ratio_text} the usual spread {direction} the expected "
            f"{format_value(expected, unit)}{' ' + context if context else ''} "
            f"(band {format_value(episode.yhat_lower, unit)} to {format_value(episode.yhat_upper, unit)}"
            f"{pattern}; score {episode.peak_score:.2f}, model {detector.name})")
    return f"{series}: {text}" if series else text
