"""The customer journey map: its figures, the before/after comparison, and its drawing.

A map shows one journey over a period: its stages as columns and the channels as swimlanes;
how many journeys entered each stage on each channel (and through which touchpoints); the
flows from stage to stage and across channels; where journeys dropped off and converted; the
emotion curve; the pain points of each stage; the moments of truth and how often they fail;
and the time spent in each stage. The figures come from ClickHouse
(``sinks.clickhouse.journey_map``); this module only computes, compares and draws, so that
the live page, the JSON API and ``journeywatch map`` show the same thing.

Emotion value of a stage: the mean, over the journeys that entered the stage, of each
journey's most intense moment there (the peak-end rule's intensity): a negative moment counts
with its (negative) value, reaching the goal counts +0.5 (``GOAL_VALUE``), a stage passed
without any moment counts 0. The curve's **peak** is the stage with the most intense mean, its
**end** the last stage.

Before/after: each rate is compared with a two-sided two-proportion z-test, each emotion mean
with Welch's t-test; the p-values of one comparison are adjusted together (Holm), and a
change is flagged when its adjusted p-value is below 0.01.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from pipeline.definitions import parse_duration_ms

ALPHA = 0.01
MIN_GROUP = 20  # fewer journeys in either period: not tested (shown as "too few")
OUTCOMES = ("converted", "dropped_off")

# Okabe-Ito colours, one per channel; every lane is also labelled, so colour is never the
# only cue (colour-blindness, printing in grey).
CHANNEL_COLOURS = {
    "web": "#0072B2",
    "app": "#009E73",
    "call_center": "#E69F00",
    "store": "#CC79A7",
    "email": "#56B4E9",
}
OTHER_COLOUR = "#7f7f7f"
NONE = "\u2013"  # shown for a figure without data
NEGATIVE = "#B34700"
POSITIVE = "#006E52"


@dataclass
class PainPoint:
    kind: str
    moments: int
    journeys: int
    share: float  # of the journeys that entered the stage
    revenue_at_risk: float | None  # journeys with it that did not convert x average order


@dataclass
class MomentOfTruth:
    name: str
    total: int
    failed: int

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.total if self.total else None


@dataclass
class StageFigures:
    stage: str
    entered: int
    entered_by_channel: dict[str, int]
    touchpoints: dict[str, list[tuple[str, int]]]  # channel -> top entry touchpoints
    dropped_off: int
    converted: int
    emotion: float | None
    emotion_sd: float | None
    pain_points: list[PainPoint] = field(default_factory=list)
    moments_of_truth: list[MomentOfTruth] = field(default_factory=list)
    minutes_median: float | None = None
    minutes_p90: float | None = None
    switches_after_failure: int = 0

    @property
    def drop_off_rate(self) -> float | None:
        return self.dropped_off / self.entered if self.entered else None


@dataclass
class Flow:
    from_stage: str
    from_channel: str
    to: str  # a stage, or "converted" / "dropped_off"
    to_channel: str
    journeys: int


@dataclass
class JourneyMap:
    journey: str
    description: str
    since: str
    until: str
    channel: str | None
    segment: str | None
    started: int
    converted: int
    dropped_off: int
    average_order_value: float | None
    stages: list[StageFigures]
    flows: list[Flow]

    @property
    def channels(self) -> list[str]:
        seen = {c for s in self.stages for c in s.entered_by_channel}
        known = [c for c in CHANNEL_COLOURS if c in seen]
        return known + sorted(seen - set(known))

    @property
    def conversion_rate(self) -> float | None:
        return self.converted / self.started if self.started else None

    @property
    def peak_stage(self) -> int | None:
        """The stage with the most intense mean emotion (a negative one wins a tie)."""
        best: int | None = None
        for index, stage in enumerate(self.stages):
            if stage.emotion is None:
                continue
            if best is None:
                best = index
                continue
            other = self.stages[best].emotion or 0.0
            value = stage.emotion
            if abs(value) > abs(other) or (abs(value) == abs(other) and value < other):
                best = index
        return best

    @property
    def end_stage(self) -> int | None:
        entered = [i for i, s in enumerate(self.stages) if s.entered]
        return entered[-1] if entered else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["conversion_rate"] = self.conversion_rate
        data["peak_stage"] = self.peak_stage
        data["end_stage"] = self.end_stage
        for stage, figures in zip(data["stages"], self.stages, strict=True):
            stage["drop_off_rate"] = figures.drop_off_rate
            for mot, mot_figures in zip(
                stage["moments_of_truth"], figures.moments_of_truth, strict=True
            ):
                mot["failure_rate"] = mot_figures.failure_rate
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JourneyMap:
        stages = [
            StageFigures(
                **{
                    k: v
                    for k, v in s.items()
                    if k not in ("pain_points", "moments_of_truth", "drop_off_rate", "touchpoints")
                },
                touchpoints={c: [(t, n) for t, n in v] for c, v in s["touchpoints"].items()},
                pain_points=[PainPoint(**p) for p in s["pain_points"]],
                moments_of_truth=[
                    MomentOfTruth(m["name"], m["total"], m["failed"]) for m in s["moments_of_truth"]
                ],
            )
            for s in data["stages"]
        ]
        plain = {
            k: v
            for k, v in data.items()
            if k not in ("stages", "flows", "conversion_rate", "peak_stage", "end_stage")
        }
        return cls(**plain, stages=stages, flows=[Flow(**f) for f in data["flows"]])


def parse_when(text: str, reference: datetime) -> datetime:
    """A period bound: an ISO 8601 date or time (UTC unless it says otherwise), ``now``, or a
    duration before ``reference`` (``90m``, ``24h``, ``7d``)."""
    text = text.strip()
    if text == "now":
        return reference
    try:
        return reference - timedelta(milliseconds=parse_duration_ms(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: write an ISO date or time (2026-11-02, "
            "2026-11-02T09:00), now, or a duration before now (24h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- statistics -----------------------------------------------------------------------------
def _normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of the two-proportion z-test (pooled); None when it cannot apply."""
    if min(n1, n2) < MIN_GROUP:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    if pooled in (0.0, 1.0):
        return 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return _normal_two_sided(z)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (Numerical Recipes, Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch_p(m1: float, sd1: float, n1: int, m2: float, sd2: float, n2: int) -> float | None:
    """Two-sided p-value of Welch's t-test on two means; None when it cannot apply."""
    if min(n1, n2) < MIN_GROUP:
        return None
    v1, v2 = sd1 * sd1 / n1, sd2 * sd2 / n2
    if v1 + v2 == 0:
        return 1.0 if m1 == m2 else 0.0
    t = (m1 - m2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    return _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@dataclass
class Change:
    stage: str  # "" for the whole journey
    figure: str  # what changed, in words
    before: float | None
    after: float | None
    unit: str  # "%", "value", "journeys"
    p_value: float | None = None  # Holm-adjusted
    significant: bool = False

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


def compare(before: JourneyMap, after: JourneyMap, alpha: float = ALPHA) -> list[Change]:
    """Every figure of the two maps side by side; rates and emotion means tested (Holm)."""
    changes: list[Change] = []
    raw: list[float | None] = []

    def rate(stage: str, figure: str, x1: int, n1: int, x2: int, n2: int) -> None:
        changes.append(Change(stage, figure, x1 / n1 if n1 else None, x2 / n2 if n2 else None, "%"))
        raw.append(two_proportion_p(x1, n1, x2, n2))

    rate("", "conversion rate", before.converted, before.started, after.converted, after.started)
    old_stages = {s.stage: s for s in before.stages}
    for new in after.stages:
        old = old_stages.get(new.stage)
        if old is None:
            continue
        changes.append(Change(new.stage, "journeys entered", old.entered, new.entered, "journeys"))
        raw.append(None)  # volumes depend on the periods' lengths: shown, not tested
        rate(new.stage, "drop-off rate", old.dropped_off, old.entered, new.dropped_off, new.entered)
        changes.append(Change(new.stage, "emotion", old.emotion, new.emotion, "value"))
        raw.append(
            welch_p(
                old.emotion,
                old.emotion_sd or 0.0,
                old.entered,
                new.emotion,
                new.emotion_sd or 0.0,
                new.entered,
            )
            if old.emotion is not None and new.emotion is not None
            else None
        )
        old_pains = {p.kind: p for p in old.pain_points}
        new_pains = {p.kind: p for p in new.pain_points}
        for kind in sorted(set(old_pains) | set(new_pains)):
            x1 = old_pains[kind].journeys if kind in old_pains else 0
            x2 = new_pains[kind].journeys if kind in new_pains else 0
            rate(
                new.stage,
                f"journeys with {kind.replace('_', ' ')}",
                x1,
                old.entered,
                x2,
                new.entered,
            )
        old_mots = {m.name: m for m in old.moments_of_truth}
        for mot in new.moments_of_truth:
            if mot.name in old_mots:
                prior = old_mots[mot.name]
                rate(
                    new.stage,
                    f"{mot.name.replace('_', ' ')} failure rate",
                    prior.failed,
                    prior.total,
                    mot.failed,
                    mot.total,
                )
    for change, p in zip(changes, holm(raw), strict=True):
        change.p_value = p
        change.significant = p is not None and p < alpha
    return changes


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    m = len(tested)
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


# --- drawing --------------------------------------------------------------------------------
def _label(name: str) -> str:
    return name.replace("_", " ")


def _pct(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.1f}%"


def _num(value: float) -> str:
    return f"{value:,.0f}"


def _money(value: float | None) -> str:
    return NONE if value is None else f"{value:,.0f}"


def _minutes(value: float | None) -> str:
    if value is None:
        return NONE
    if value >= 120:
        return f"{value / 60:.1f} h"
    return f"{value:.0f} min" if value >= 1 else f"{value * 60:.0f} s"


COLUMN_W, LANE_H, LEFT, TOP = 250, 92, 150, 118


def render_svg(journey_map: JourneyMap, changes: list[Change] | None = None) -> str:
    """The map as one standalone SVG (text as text: searchable, accessible, printable)."""
    m = journey_map
    channels = m.channels or ["web"]
    n = max(1, len(m.stages))
    width = LEFT + n * COLUMN_W + 40
    lanes_bottom = TOP + len(channels) * LANE_H
    curve_top = lanes_bottom + 34
    curve_h = 120
    pains_top = curve_top + curve_h + 40
    pains_h = 150
    height = pains_top + pains_h + 80
    widest = max([c for s in m.stages for c in s.entered_by_channel.values()] or [1])
    flow_max = max([f.journeys for f in m.flows] or [1])
    significant = {(c.stage, c.figure): c for c in (changes or []) if c.significant}
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" font-family="DejaVu Sans, sans-serif" '
        f'aria-labelledby="map-title map-desc">',
        f'<title id="map-title">Customer journey map: {escape(_label(m.journey))}</title>',
        f'<desc id="map-desc">{escape(m.description)} {_num(m.started)} journeys started, '
        f"{_num(m.converted)} converted ({_pct(m.conversion_rate)}), from {escape(m.since)} "
        f"to {escape(m.until)}.</desc>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="20" y="34" font-size="22" font-weight="bold" fill="#1a1a1a">'
        f"{escape(_label(m.journey).capitalize())}: customer journey map</text>",
        f'<text x="20" y="58" font-size="13" fill="#444">{escape(m.since)} to {escape(m.until)}'
        f"{' · channel ' + escape(_label(m.channel)) if m.channel else ''}"
        f"{' · ' + escape(m.segment) + ' customers' if m.segment else ''} · "
        f"{_num(m.started)} journeys started · {_num(m.converted)} converted "
        f"({_pct(m.conversion_rate)}) · {_num(m.dropped_off)} dropped off</text>",
    ]
    # stage headers
    for i, stage in enumerate(m.stages):
        x = LEFT + i * COLUMN_W
        out.append(
            f'<rect x="{x + 4}" y="72" width="{COLUMN_W - 8}" height="40" rx="4" '
            f'fill="#eef2f6" stroke="#9aa5b1"/>'
        )
        out.append(
            f'<text x="{x + COLUMN_W / 2}" y="89" text-anchor="middle" font-size="14" '
            f'font-weight="bold" fill="#1a1a1a">{i + 1}. {escape(_label(stage.stage))}</text>'
        )
        flag = significant.get((stage.stage, "drop-off rate"))
        marker = ""
        if flag is not None and flag.delta is not None:
            marker = " ▲" if flag.delta > 0 else " ▼"
        out.append(
            f'<text x="{x + COLUMN_W / 2}" y="106" text-anchor="middle" font-size="11.5" '
            f'fill="#333" data-figure="stage.{escape(stage.stage)}.summary">'
            f"{_num(stage.entered)} entered · drop-off {_pct(stage.drop_off_rate)}{marker}"
            f"</text>"
        )
    # swimlanes
    for j, channel in enumerate(channels):
        y = TOP + j * LANE_H
        colour = CHANNEL_COLOURS.get(channel, OTHER_COLOUR)
        out.append(
            f'<rect x="10" y="{y}" width="{width - 30}" height="{LANE_H - 4}" '
            f'fill="{"#fafafa" if j % 2 else "#f3f5f7"}"/>'
        )
        out.append(f'<rect x="10" y="{y}" width="6" height="{LANE_H - 4}" fill="{colour}"/>')
        out.append(
            f'<text x="24" y="{y + LANE_H / 2}" font-size="14" font-weight="bold" '
            f'fill="#1a1a1a">{escape(_label(channel))}</text>'
        )
    # flows between stages (under the nodes)
    index = {s.stage: i for i, s in enumerate(m.stages)}
    lane = {c: j for j, c in enumerate(channels)}
    for flow in sorted(m.flows, key=lambda f: -f.journeys):
        if flow.from_stage not in index or flow.from_channel not in lane:
            continue
        x1 = LEFT + index[flow.from_stage] * COLUMN_W + COLUMN_W / 2 + 26
        y1 = TOP + lane[flow.from_channel] * LANE_H + LANE_H / 2 - 2
        stroke = 1 + 11 * flow.journeys / flow_max
        if flow.to in index and flow.to_channel in lane:
            x2 = LEFT + index[flow.to] * COLUMN_W + COLUMN_W / 2 - 26
            y2 = TOP + lane[flow.to_channel] * LANE_H + LANE_H / 2 - 2
            switch = flow.to_channel != flow.from_channel
            dashes = ' stroke-dasharray="6 4"' if switch else ""
            out.append(
                f'<path d="M{x1:.0f},{y1:.0f} C{(x1 + x2) / 2:.0f},{y1:.0f} '
                f'{(x1 + x2) / 2:.0f},{y2:.0f} {x2:.0f},{y2:.0f}" fill="none" '
                f'stroke="{"#555" if switch else "#9aa5b1"}" stroke-opacity="0.55" '
                f'stroke-width="{stroke:.1f}"{dashes}>'
                f"<title>{_num(flow.journeys)} journeys: {escape(_label(flow.from_stage))} on "
                f"{escape(_label(flow.from_channel))} → {escape(_label(flow.to))} on "
                f"{escape(_label(flow.to_channel))}</title></path>"
            )
    # nodes: entries per stage and channel, with the top entry touchpoints
    for i, stage in enumerate(m.stages):
        for channel, count in stage.entered_by_channel.items():
            if channel not in lane or not count:
                continue
            cx = LEFT + i * COLUMN_W + COLUMN_W / 2
            cy = TOP + lane[channel] * LANE_H + LANE_H / 2 - 2
            r = 8 + 20 * math.sqrt(count / widest)
            colour = CHANNEL_COLOURS.get(channel, OTHER_COLOUR)
            out.append(
                f'<circle cx="{cx}" cy="{cy}" r="{r:.1f}" fill="{colour}" fill-opacity="0.85" '
                f'stroke="#1a1a1a" stroke-width="1"><title>{_num(count)} journeys entered '
                f"{escape(_label(stage.stage))} on {escape(_label(channel))}</title></circle>"
            )
            out.append(
                f'<text x="{cx + r + 4:.0f}" y="{cy - 4:.0f}" font-size="12" font-weight="bold" '
                f'fill="#1a1a1a" data-figure="entered.{escape(stage.stage)}.{escape(channel)}">'
                f"{_num(count)}</text>"
            )
            top = ", ".join(t for t, _ in stage.touchpoints.get(channel, [])[:2])
            if top:
                out.append(
                    f'<text x="{cx + r + 4:.0f}" y="{cy + 11:.0f}" font-size="10" '
                    f'fill="#444">{escape(top[:34])}</text>'
                )
        if stage.dropped_off or stage.converted:
            x = LEFT + i * COLUMN_W + 10
            y = lanes_bottom + 14
            parts = []
            if stage.converted:
                parts.append(f"✓ {_num(stage.converted)} converted")
            if stage.dropped_off:
                parts.append(f"✗ {_num(stage.dropped_off)} dropped off")
            if stage.switches_after_failure:
                parts.append(f"⇄ {_num(stage.switches_after_failure)} switched")
            out.append(
                f'<text x="{x}" y="{y}" font-size="11.5" fill="#1a1a1a">'
                f"{escape(' · '.join(parts))}</text>"
            )
    # emotion curve
    zero = curve_top + curve_h / 2
    out.append(
        f'<text x="20" y="{curve_top + 14}" font-size="14" font-weight="bold" '
        f'fill="#1a1a1a">Emotion</text>'
    )
    out.append(
        f'<text x="20" y="{curve_top + 30}" font-size="10.5" fill="#444">mean moment value,'
        f'</text><text x="20" y="{curve_top + 43}" font-size="10.5" fill="#444">-1 to +1</text>'
    )
    out.append(
        f'<line x1="{LEFT}" y1="{zero}" x2="{LEFT + n * COLUMN_W}" y2="{zero}" '
        f'stroke="#9aa5b1" stroke-dasharray="3 3"/>'
    )
    for value, label in ((1, "+1"), (-1, "-1")):
        tick = zero - value * (curve_h / 2 - 8)
        out.append(
            f'<text x="{LEFT - 6}" y="{tick + 4}" text-anchor="end" font-size="10" '
            f'fill="#444">{label}</text>'
        )
    points = [
        (LEFT + i * COLUMN_W + COLUMN_W / 2, zero - s.emotion * (curve_h / 2 - 8), s)
        for i, s in enumerate(m.stages)
        if s.emotion is not None
    ]
    if len(points) > 1:
        out.append(
            '<polyline fill="none" stroke="#1a1a1a" stroke-width="2" points="'
            + " ".join(f"{x:.0f},{y:.1f}" for x, y, _ in points)
            + '"/>'
        )
    peak, end = m.peak_stage, m.end_stage
    for i, stage in enumerate(m.stages):
        if stage.emotion is None:
            continue
        px = LEFT + i * COLUMN_W + COLUMN_W / 2
        py = zero - stage.emotion * (curve_h / 2 - 8)
        colour = NEGATIVE if stage.emotion < 0 else POSITIVE if stage.emotion > 0 else "#444"
        shape = (
            f'<rect x="{px - 6}" y="{py - 6:.1f}" width="12" height="12" fill="{colour}"/>'
            if stage.emotion < 0
            else f'<circle cx="{px}" cy="{py:.1f}" r="6" fill="{colour}"/>'
        )
        out.append(shape)
        tags = [t for t, at in (("peak", peak), ("end", end)) if at == i]
        out.append(
            f'<text x="{px + 10}" y="{py - 9:.1f}" font-size="12" font-weight="bold" '
            f'fill="{colour}" '
            f'data-figure="emotion.{escape(stage.stage)}">{stage.emotion:+.2f}'
            f"{' (' + ' and '.join(tags) + ')' if tags else ''}</text>"
        )
    # pain points, moments of truth, time per stage
    out.append(
        f'<text x="20" y="{pains_top + 14}" font-size="14" font-weight="bold" '
        f'fill="#1a1a1a">Pain points</text>'
    )
    out.append(
        f'<text x="20" y="{pains_top + 30}" font-size="10.5" fill="#444">share of journeys'
        f'</text><text x="20" y="{pains_top + 43}" font-size="10.5" fill="#444">at the stage,'
        f'</text><text x="20" y="{pains_top + 56}" font-size="10.5" fill="#444">revenue at risk'
        f"</text>"
    )
    for i, stage in enumerate(m.stages):
        x = LEFT + i * COLUMN_W + 10
        y = pains_top + 14
        for rank, pain in enumerate(stage.pain_points[:3]):
            risk = f" · {_money(pain.revenue_at_risk)} at risk" if pain.revenue_at_risk else ""
            flag = significant.get((stage.stage, f"journeys with {_label(pain.kind)}"))
            marker = ""
            if flag is not None and flag.delta is not None:
                marker = " ▲" if flag.delta > 0 else " ▼"
            out.append(
                f'<text x="{x}" y="{y + rank * 30}" font-size="12" font-weight="bold" '
                f'fill="{NEGATIVE}" data-figure="pain.{escape(stage.stage)}.{rank}">'
                f"{rank + 1}. {escape(_label(pain.kind))}{marker}</text>"
            )
            out.append(
                f'<text x="{x + 14}" y="{y + rank * 30 + 14}" font-size="10.5" fill="#333">'
                f"{_num(pain.journeys)} journeys ({_pct(pain.share)}){escape(risk)}</text>"
            )
        y = pains_top + 104
        for mot in stage.moments_of_truth[:1]:
            out.append(
                f'<path d="M{x + 5},{y - 9} l5,5 l-5,5 l-5,-5 z" fill="#1a1a1a"/>'
                f'<text x="{x + 14}" y="{y}" font-size="11" fill="#1a1a1a">moment of truth '
                f"{escape(_label(mot.name))}: {_pct(mot.failure_rate)} fail</text>"
            )
        out.append(
            f'<text x="{x}" y="{y + 20}" font-size="11" fill="#333">time here: median '
            f"{_minutes(stage.minutes_median)} · p90 {_minutes(stage.minutes_p90)}</text>"
        )
    # legend
    legend = (
        "Circles: journeys entering a stage on a channel (area ∝ journeys). Lines: journeys "
        "moving on (width ∝ journeys; dashed: a channel switch).",
        "Emotion: ■ negative, ● positive. ✓ converted, ✗ dropped off, ⇄ switched channel "
        f"after a failure. ▲▼ significant change (Holm-adjusted p < {ALPHA}).",
    )
    for number, line in enumerate(legend):
        out.append(
            f'<text x="20" y="{height - 40 + number * 16}" font-size="11" fill="#333">'
            f"{escape(line)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _changes_table(changes: list[Change]) -> str:
    def value(v: float | None, unit: str) -> str:
        if v is None:
            return NONE
        if unit == "%":
            return _pct(v)
        if unit == "value":
            return f"{v:+.2f}"
        return _num(v)

    def delta(c: Change) -> str:
        if c.delta is None:
            return NONE
        if c.unit == "%":
            return f"{100 * c.delta:+.1f} pts"
        if c.unit == "value":
            return f"{c.delta:+.2f}"
        return f"{c.delta:+,.0f}"

    rows = []
    for c in changes:
        if c.p_value is None:
            verdict = "not tested" if c.unit == "journeys" else "too few journeys"
        elif c.significant:
            verdict = f"▲ larger than chance (p = {c.p_value:.2g})"
        else:
            verdict = f"within chance (p = {c.p_value:.2g})"
        rows.append(
            f'<tr data-change="{escape(c.stage)}|{escape(c.figure)}" '
            f'data-significant="{str(c.significant).lower()}">'
            f"<td>{escape(_label(c.stage)) or 'whole journey'}</td><td>{escape(c.figure)}</td>"
            f'<td class="n">{value(c.before, c.unit)}</td>'
            f'<td class="n">{value(c.after, c.unit)}</td><td class="n">{delta(c)}</td>'
            f"<td{' class=sig' if c.significant else ''}>{escape(verdict)}</td></tr>"
        )
    return (
        "<table><caption>Before and after: each figure, its change, and whether the change "
        f"is larger than chance would explain (two-sided two-proportion z-test for rates, "
        f"Welch's t-test for emotion, Holm-adjusted, alpha = {ALPHA})</caption>"
        "<thead><tr><th>Stage</th><th>Figure</th><th>Before</th><th>After</th><th>Change</th>"
        "<th>Verdict</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _stage_table(m: JourneyMap) -> str:
    rows = []
    for stage in m.stages:
        pains = "; ".join(
            f"{_label(p.kind)} {p.journeys} ({_pct(p.share)})" for p in stage.pain_points[:3]
        )
        mots = "; ".join(
            f"{_label(t.name)} {_pct(t.failure_rate)} fail" for t in stage.moments_of_truth
        )
        rows.append(
            f"<tr><th scope=row>{escape(_label(stage.stage))}</th>"
            f'<td class="n">{_num(stage.entered)}</td><td class="n">{_num(stage.dropped_off)}'
            f'</td><td class="n">{_pct(stage.drop_off_rate)}</td>'
            f'<td class="n">{_num(stage.converted)}</td>'
            f'<td class="n">{NONE if stage.emotion is None else f"{stage.emotion:+.2f}"}</td>'
            f'<td class="n">{_minutes(stage.minutes_median)}</td>'
            f"<td>{escape(pains) or NONE}</td><td>{escape(mots) or NONE}</td></tr>"
        )
    return (
        "<table><caption>Stage by stage</caption><thead><tr><th>Stage</th><th>Entered</th>"
        "<th>Dropped off</th><th>Drop-off rate</th><th>Converted</th><th>Emotion</th>"
        "<th>Median time</th><th>Top pain points</th><th>Moments of truth</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )


MAP_CSS = """
body { margin: 0; background: #fff; color: #1a1a1a; font: 15px/1.45 "DejaVu Sans", sans-serif; }
main { padding: 16px 20px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 6px; }
.maps { display: grid; gap: 16px;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 620px), 1fr)); }
.maps figure { margin: 0; min-width: 0; }
figcaption { font-weight: bold; margin-bottom: 4px; }
svg { max-width: 100%; height: auto; border: 1px solid #d4d4d4; }
table { border-collapse: collapse; margin: 6px 0 18px; font-size: 13px; }
caption { text-align: left; font-weight: bold; padding: 4px 0; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #d4d4d4; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.sig { font-weight: bold; color: #B34700; }
.muted { color: #555; font-size: 13px; }
@media print { svg { border: none; } }
"""


def render_fragment(m: JourneyMap, before: JourneyMap | None = None) -> str:
    """The map's body: the map(s), the stage table, and the comparison when there is one."""
    if before is None:
        return (
            f'<div class="maps"><figure>{render_svg(m)}</figure></div>'
            f"<h2>Figures</h2>{_stage_table(m)}"
        )
    changes = compare(before, m)
    return (
        '<div class="maps">'
        f"<figure><figcaption>Before: {escape(before.since)} to {escape(before.until)}"
        f"</figcaption>{render_svg(before)}</figure>"
        f"<figure><figcaption>After: {escape(m.since)} to {escape(m.until)}</figcaption>"
        f"{render_svg(m, changes)}</figure></div>"
        f"<h2>What changed</h2>{_changes_table(changes)}"
        f"<h2>Figures after</h2>{_stage_table(m)}<h2>Figures before</h2>{_stage_table(before)}"
    )


def render_html(
    m: JourneyMap, before: JourneyMap | None = None, fonts: dict[str, str] | None = None
) -> str:
    """One self-contained HTML file: no script, no request; ``fonts`` maps a weight ("normal",
    "bold") to a base64 TrueType font embedded with @font-face."""
    faces = "".join(
        f'@font-face {{ font-family: "DejaVu Sans"; font-weight: {weight}; '
        f'src: url(data:font/ttf;base64,{data}) format("truetype"); }}\n'
        for weight, data in (fonts or {}).items()
    )
    title = f"{_label(m.journey).capitalize()}: customer journey map"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{faces}{MAP_CSS}</style></head><body><main>"
        f"<h1>{escape(title)}</h1><p class=muted>{escape(m.description)} Generated by "
        "journeywatch from ClickHouse; how to read it: docs/journey-map.md.</p>"
        f"{render_fragment(m, before)}</main></body></html>\n"
    )
