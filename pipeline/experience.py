"""Experience values and the peak-end score.

Every touchpoint is a moment with a value in [-1, 1]: 0 for a plain, uneventful touch,
negative for a negative moment, positive for a good survey answer or a reached goal. A
negative moment at a moment of truth weighs more: with weight ``w`` its intensity ``i``
becomes ``1 - (1 - i) ** w`` (still below 1, and ordered as before).

By the peak-end rule, a journey is judged by its most intense moment (the peak, good or bad;
bad wins a tie) and by its last moment (the end), not by the average:

    score = 50 * (1 + (peak + end) / 2)          # 0 (awful) … 50 (neutral) … 100 (delightful)

Worked example (docs/journey-engine.md): product view (0), add to cart (0), payment declined
at the payment moment of truth (error 0.6 at weight 3 → -0.936), payment retried and
confirmed (goal +0.5). Peak -0.936, end +0.5: score = 50 * (1 + (-0.436 / 2)) = 39.1. The
same journey ending with the decline (end -0.936) scores 50 * (1 - 0.936) = 3.2.
"""

from __future__ import annotations

from typing import Final

# Intensity of each negative-moment kind (before the moment-of-truth weight).
NEGATIVE_INTENSITY: Final[dict[str, float]] = {
    "error": 0.6,
    "abandoned": 0.5,
    "call_abandoned": 0.7,
    "long_wait": 0.4,
    "slow_page": 0.3,
    "low_csat": 0.8,
    "nps_detractor": 0.6,
    "negative_sentiment": 0.5,
    "complaint": 0.9,
    "transfer": 0.3,
    "repeat_contact": 0.6,
    "channel_switch_after_failure": 0.5,
    "repeated_attempts": 0.4,
}
GOAL_VALUE: Final = 0.5


def weighted(intensity: float, weight: float) -> float:
    """A negative moment's intensity at a moment of truth of ``weight`` (1: no change)."""
    if weight <= 1.0:
        return intensity
    return float(1.0 - (1.0 - intensity) ** weight)


def positive_value(csat: int | None, nps: int | None, sentiment: float | None) -> float:
    value = 0.0
    if csat is not None and csat >= 4:
        value = max(value, 0.8 if csat == 5 else 0.4)
    if nps is not None and nps >= 9:
        value = max(value, 0.7)
    if sentiment is not None and sentiment > 0.3:
        value = max(value, float(sentiment))
    return value


def more_intense(a: float, b: float) -> float:
    """The more intense of two values; a negative wins a tie."""
    if abs(b) > abs(a) or (abs(b) == abs(a) and b < a):
        return b
    return a


def peak_end_score(peak: float, end: float) -> float:
    """The journey's experience score, 0-100 (50 is neutral)."""
    return round(50.0 * (1.0 + (peak + end) / 2.0), 2)
