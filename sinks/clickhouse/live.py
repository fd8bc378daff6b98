"""The figures of the live page (``/``) and of ``GET /api/v1/live``, read from the rollups.

Every figure is anchored at the newest minute that holds touchpoints (``as_of``), not at the
wall clock: a replayed or delayed stream shows its own last minutes, and the page says how old
they are. The window is the last ``window_minutes`` up to and including ``as_of``; the
baseline is the ``baseline_minutes`` before the window, as in the alert rules. Counts are exact
distinct ids, so totals stay right however many workers wrote them and however often an output
was re-emitted. Rates follow the alert rules and the analyst guide:

- drop-off rate: drop-offs / stage entries (``started`` + ``stage_reached``);
- negative moments per 100 touchpoints of the channel.

The experience KPIs (``kpis``) are read from the engine's ``kpi`` and ``score`` outputs in
``experience_moments`` (each output once, by ``output_id``), for the window, the baseline and
the same window a week before (``week_before``), as the KPI alert rules compare them.

With a ``segment`` (one of the journeys file's segments, or ``other``: docs/segments.md) the
journey figures, the negative moments, the journeys at risk and the KPIs are those of the
journeys of that segment (the ``segment`` column of journey_events and experience_moments,
migration 0014), read from the raw tables instead of the rollups, which have no segment;
traffic stays the whole stream's (a touchpoint belongs to no journey yet when it is counted),
so the negative moments per 100 touchpoints are not given (``null``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from pipeline.segment_rules import OTHER
from sinks.clickhouse.queries import newest_minute

ENTRIES = ("started", "stage_reached")
FEED_LENGTH = 20
WEEK = timedelta(days=7)
# The KPIs of the live page: what each figure is (docs/live-page.md, "Experience KPIs").
KPIS = ("csat", "nps", "first_contact_resolution", "complaint_response", "peak_end")
PERIODS = ("now", "baseline", "week_before")
_SEGMENT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def segment_sql(segment: str | None, named: Sequence[str] | None = None) -> str:
    """`` AND segment = '<name>'``, or "" for no segment (names checked again here: they go
    into SQL). Given ``named``, the journeys file's segments, ``other`` is every journey in
    none of them: also one whose segment an earlier file named (in flight when the file was
    edited), as the workers' metrics count it (streams/journeys.py), so that the segments
    still add up to every journey's figures."""
    if segment is None:
        return ""
    for name in (segment, *(named or ())):
        if not _SEGMENT.match(name):
            raise ValueError(f"segment: {name!r} is not a segment name")
    if segment == OTHER and named is not None:
        names = [name for name in named if name != OTHER]
        quoted = ", ".join(f"'{name}'" for name in names)
        return f" AND segment NOT IN ({quoted})" if names else ""
    return f" AND segment = '{segment}'"


@dataclass(frozen=True)
class JourneyShape:
    """What the page needs of a journey definition: its name and its stages in order."""

    name: str
    stages: tuple[str, ...]


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _sql_time(moment: datetime) -> str:
    return f"toDateTime('{moment.strftime('%Y-%m-%d %H:%M:%S')}', 'UTC')"


def empty_snapshot(
    window_minutes: int, baseline_minutes: int, segment: str | None = None
) -> dict[str, Any]:
    return {
        "as_of": None,
        "segment": segment,
        "window_minutes": window_minutes,
        "baseline_minutes": baseline_minutes,
        "minutes": [],
        "totals": dict.fromkeys(
            ("touchpoints", "started", "converted", "dropped_off", "negative_moments", "at_risk"),
            0,
        ),
        "traffic": [],
        "drop_offs_per_minute": [],
        "negative_moments_per_minute": [],
        "journeys": [],
        "negative_moment_rates": [],
        "negative_moments": [],
        "at_risk": [],
        "kpis": empty_kpis(),
    }


def empty_kpis() -> dict[str, Any]:
    none = {"n": 0, "value": None, "baseline": None, "week_before": None}
    return {**{name: dict(none) for name in KPIS}, "revenue": []}


def kpi_figures(
    client: Client,
    database: str,
    start: datetime,
    end: datetime,
    baseline_start: datetime,
    segment: str | None = None,
    named_segments: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The experience KPIs of the outputs at ``start`` <= at < ``end`` (``n``, ``value``), of
    the baseline (``baseline_start`` to ``start``) and of the same window a week before:

    - csat: the share of CSAT answers that are 4 or 5 (0-1); n: answers;
    - nps: promoters minus detractors, in points (-100 to 100); n: answers;
    - first_contact_resolution: the share of resolved cases that took one contact; n: cases;
    - complaint_response: the median seconds from a complaint to its response; n: responses;
    - peak_end: the average peak-end score of the journeys that ended (0-100); n: journeys;
    - revenue: per currency, the amount of identified customers' purchases; its baseline is
      the baseline's amount per window length (the baseline is longer than the window).
    """
    db = database
    periods = {
        "now": (start, end),
        "baseline": (baseline_start, start),
        "week_before": (start - WEEK, end - WEEK),
    }
    within = " OR ".join(
        f"(at >= {_sql_time(low)} AND at < {_sql_time(high)})" for low, high in periods.values()
    )
    period = (
        f"multiIf(at >= {_sql_time(start)}, 'now', at >= {_sql_time(baseline_start)}, "
        "'baseline', 'week_before')"
    )
    rows = client.query(
        f"SELECT {period} AS period, name, "
        "if(name = 'ltv_increment', JSONExtractString(detail, 'currency'), '') AS currency, "
        "count() AS n, sum(value) AS total, countIf(value >= 4) AS high, "
        "countIf(value >= 9) AS promoters, countIf(value <= 6) AS detractors, "
        "quantileExact(0.5)(value) AS median "
        "FROM ("  # each output once (a re-emitted one has the same id and figures)
        f"  SELECT name, at, value, detail FROM {db}.experience_moments "
        "  WHERE (type = 'score' AND name = 'peak_end' OR type = 'kpi' AND name IN "
        "  ('csat', 'nps', 'first_contact_resolution', 'complaint_response', 'ltv_increment')) "
        f"  AND ({within}) AND value IS NOT NULL{segment_sql(segment, named_segments)} "
        "LIMIT 1 BY output_id"
        ") GROUP BY period, name, currency"
    ).result_rows
    figures: dict[str, dict[str, Any]] = {name: {} for name in KPIS}
    revenue: dict[str, dict[str, Any]] = defaultdict(dict)
    for when, name, currency, n, total, high, promoters, detractors, median in rows:
        n = int(n)
        if name == "csat":
            value: float | None = _ratio(int(high), n)
        elif name == "nps":
            value = round(100 * (int(promoters) - int(detractors)) / n, 1) if n else None
        elif name == "first_contact_resolution":
            value = _ratio(float(total), n)  # each case is 1 (one contact) or 0
        elif name == "complaint_response":
            value = round(float(median), 1)
        elif name == "peak_end":
            value = round(float(total) / n, 2) if n else None
        else:  # ltv_increment
            revenue[currency][when] = (n, float(total))
            continue
        figures[name][when] = (n, value)
    kpis: dict[str, Any] = {}
    for name in KPIS:
        found = figures[name]
        kpis[name] = {
            "n": found.get("now", (0, None))[0],
            "value": found.get("now", (0, None))[1],
            "baseline": found.get("baseline", (0, None))[1],
            "week_before": found.get("week_before", (0, None))[1],
        }
    share = (end - start) / (start - baseline_start) if start > baseline_start else 0.0
    kpis["revenue"] = [
        {
            "currency": currency,
            "n": found.get("now", (0, 0.0))[0],
            "value": round(found.get("now", (0, 0.0))[1], 2),
            "baseline": round(found["baseline"][1] * share, 2) if "baseline" in found else None,
            "week_before": round(found["week_before"][1], 2) if "week_before" in found else None,
        }
        for currency, found in sorted(revenue.items())
    ]
    return kpis


def live_snapshot(
    client: Client,
    database: str,
    journeys: Sequence[JourneyShape],
    window_minutes: int = 15,
    baseline_minutes: int = 360,
    segment: str | None = None,
    named_segments: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything the live page shows, as one JSON-ready dict (see docs/live-page.md); with
    ``segment``, of that segment's journeys (the module's docstring; ``named_segments``: the
    journeys file's, which ``other`` is none of: ``segment_sql``)."""
    db = database
    in_segment = segment_sql(segment, named_segments)
    as_of = newest_minute(client, db)
    if as_of is None:
        return empty_snapshot(window_minutes, baseline_minutes, segment)
    start = as_of - timedelta(minutes=window_minutes - 1)
    baseline_start = start - timedelta(minutes=baseline_minutes)
    minutes = [start + timedelta(minutes=n) for n in range(window_minutes)]
    index = {m: n for n, m in enumerate(minutes)}
    window = f"minute BETWEEN {_sql_time(start)} AND {_sql_time(as_of)}"
    with_baseline = f"minute BETWEEN {_sql_time(baseline_start)} AND {_sql_time(as_of)}"
    current = f"minute >= {_sql_time(start)}"
    journey_rollup, moment_rollup = f"{db}.journey_rollup_1m", f"{db}.moment_rollup_1m"
    if segment is not None:  # the rollups' shape, from the raw rows of the segment
        since = f"at >= {_sql_time(baseline_start)}"
        # The rollups keep a retracted drop-off and net its retraction out; the raw table
        # loses the drop-off (the writer deletes it: sinks/clickhouse/writer.py). So here a
        # drop-off counts only when its journey has no retraction (one drop-off per journey,
        # the retraction at the drop-off's own time), and retractions are left out: else a
        # segment's drop-offs lose each retracted one twice. (Any segment's retraction: one
        # an earlier release's worker wrote without the journey's segment retracts it too.)
        journey_rollup = (
            "(SELECT toStartOfMinute(at) AS minute, journey, stage, channel, name, "
            f"uniqExactState(output_id) AS outputs FROM {db}.journey_events "
            f"WHERE type = 'journey' AND {since}{in_segment} "
            "AND name != 'dropoff_retracted' AND NOT (name = 'dropped_off' AND journey_id IN "
            f"(SELECT journey_id FROM {db}.journey_events WHERE type = 'journey' "
            f"AND name = 'dropoff_retracted' AND {since})) "
            "GROUP BY minute, journey, stage, channel, name)"
        )
        moment_rollup = (
            "(SELECT toStartOfMinute(at) AS minute, type, name, journey, stage, channel, "
            f"uniqExactState(output_id) AS outputs FROM {db}.experience_moments "
            f"WHERE type IN ('negative_moment', 'moment_of_truth') AND {since}{in_segment} "
            "GROUP BY minute, type, name, journey, stage, channel)"
        )

    # --- traffic per channel, per minute of the window, and the baseline per minute --------
    traffic: dict[str, list[int]] = defaultdict(lambda: [0] * window_minutes)
    touch_base: dict[str, int] = defaultdict(int)
    touch_now: dict[str, int] = defaultdict(int)
    for minute, channel, is_current, count in client.query(
        f"SELECT minute, channel, {current} AS current, sum(events) "
        f"FROM {db}.touchpoint_rollup_1m WHERE {with_baseline} "
        "GROUP BY minute, channel, current"
    ).result_rows:
        if is_current:
            traffic[channel][index[minute.replace(tzinfo=UTC)]] = int(count)
            touch_now[channel] += int(count)
        else:
            touch_base[channel] += int(count)

    # --- journeys: funnel by stage in the window, drop-off rate against the baseline -------
    flow: dict[tuple[str, str, str, bool], int] = defaultdict(int)
    for journey, stage, name, is_current, count in client.query(
        f"SELECT journey, stage, name, {current} AS current, uniqExactMerge(outputs) "
        f"FROM {journey_rollup} WHERE {with_baseline} "
        "GROUP BY journey, stage, name, current"
    ).result_rows:
        # a retracted drop-off (the journey then converted) leaves the drop-offs: the
        # retraction is in the drop-off's own minute, journey, stage and channel
        if name == "dropoff_retracted":
            name, count = "dropped_off", -int(count)
        flow[(journey, stage, name, bool(is_current))] += int(count)
    drops_per_minute: list[int] = [0] * window_minutes
    for minute, count in client.query(
        f"SELECT minute, uniqExactMergeIf(outputs, name = 'dropped_off') "
        "- uniqExactMergeIf(outputs, name = 'dropoff_retracted') "
        f"FROM {journey_rollup} "
        f"WHERE {window} AND name IN ('dropped_off', 'dropoff_retracted') GROUP BY minute"
    ).result_rows:
        drops_per_minute[index[minute.replace(tzinfo=UTC)]] = int(count)

    def total(journey: str, names: Sequence[str], now: bool, stage: str | None = None) -> int:
        return sum(
            count
            for (j, s, n, c), count in flow.items()
            if j == journey and n in names and c is now and (stage is None or s == stage)
        )

    journey_rows = []
    for shape in journeys:
        stages: list[dict[str, Any]] = []
        for stage in shape.stages:
            entered = total(shape.name, ENTRIES, True, stage)
            dropped = total(shape.name, ("dropped_off",), True, stage)
            stages.append(
                {
                    "stage": stage,
                    "entered": entered,
                    "dropped_off": dropped,
                    "converted": total(shape.name, ("converted",), True, stage),
                    "drop_off_rate": _ratio(dropped, entered),
                }
            )
        entered_now = total(shape.name, ENTRIES, True)
        entered_base = total(shape.name, ENTRIES, False)
        journey_rows.append(
            {
                "journey": shape.name,
                "started": total(shape.name, ("started",), True),
                "converted": total(shape.name, ("converted",), True),
                "dropped_off": total(shape.name, ("dropped_off",), True),
                "drop_off_rate": _ratio(total(shape.name, ("dropped_off",), True), entered_now),
                "baseline_drop_off_rate": _ratio(
                    total(shape.name, ("dropped_off",), False), entered_base
                ),
                "stages": stages,
            }
        )

    # --- negative moments per 100 touchpoints of each channel ------------------------------
    negatives_now: dict[str, int] = defaultdict(int)
    negatives_base: dict[str, int] = defaultdict(int)
    negatives_per_minute: list[int] = [0] * window_minutes
    for minute, channel, is_current, count in client.query(
        f"SELECT minute, channel, {current} AS current, uniqExactMerge(outputs) "
        f"FROM {moment_rollup} WHERE {with_baseline} AND type = 'negative_moment' "
        "GROUP BY minute, channel, current"
    ).result_rows:
        if is_current:
            negatives_now[channel] += int(count)
            negatives_per_minute[index[minute.replace(tzinfo=UTC)]] += int(count)
        else:
            negatives_base[channel] += int(count)
    channels = sorted(set(touch_now) | set(touch_base) | set(negatives_now))
    negative_rates = [
        {
            "channel": channel,
            "negative_moments": negatives_now[channel],
            "touchpoints": touch_now[channel],
            "per_100_touchpoints": None
            if segment
            else _per_100(negatives_now[channel], touch_now[channel]),
            "baseline_per_100_touchpoints": None
            if segment
            else _per_100(negatives_base[channel], touch_base[channel]),
        }
        for channel in channels
    ]

    # --- the feeds: latest negative moments, journeys at risk ------------------------------
    feed = [
        {
            "at": _iso(at),
            "kind": kind,
            "journey": journey or None,
            "stage": stage or None,
            "channel": channel or None,
            "touchpoint": touchpoint or None,
            "severity": orjson.loads(detail or "{}").get("severity"),
            "moment_of_truth": orjson.loads(detail or "{}").get("moment_of_truth"),
            "journey_id": journey_id or None,
            "person_id": person_id or None,  # (the customer page: /customers/<person>)
        }
        for at, kind, journey, stage, channel, touchpoint, detail, journey_id, person_id in (
            client.query(
                "SELECT at, name, journey, stage, channel, touchpoint, detail, journey_id, "
                "person_id "
                f"FROM {db}.experience_moments WHERE type = 'negative_moment'{in_segment} "
                f"AND at >= {_sql_time(start)} AND at < {_sql_time(as_of + timedelta(minutes=1))} "
                f"ORDER BY at DESC, output_id LIMIT 1 BY output_id LIMIT {FEED_LENGTH}"
            ).result_rows
        )
    ]
    # At risk: a moment of truth failed since the baseline began, and the journey has neither
    # converted nor dropped off since.
    at_risk_sql = (
        "SELECT journey_id, any(journey), argMax(stage, at), argMax(name, at), "
        "argMax(channel, at), max(at), argMax(person_id, at), count() OVER () AS total "
        f"FROM {db}.experience_moments "
        f"WHERE type = 'moment_of_truth' AND at >= {_sql_time(baseline_start)} "
        f"AND at < {_sql_time(as_of + timedelta(minutes=1))} "
        f"AND JSONExtractBool(detail, 'passed') = 0 AND journey_id != ''{in_segment} "
        "AND journey_id NOT IN ("
        f"  SELECT journey_id FROM {db}.journey_events "
        f"  WHERE name IN ('converted', 'dropped_off') AND at >= {_sql_time(baseline_start)}"
        ") GROUP BY journey_id "
        f"ORDER BY max(at) DESC, journey_id LIMIT {FEED_LENGTH}"
    )
    at_risk_rows = client.query(at_risk_sql).result_rows
    at_risk = [
        {
            "journey_id": journey_id,
            "journey": journey,
            "stage": stage,
            "moment_of_truth": moment,
            "channel": channel or None,
            "failed_at": _iso(at),
            "person_id": person_id or None,  # (the customer page: /customers/<person>)
        }
        for journey_id, journey, stage, moment, channel, at, person_id, _ in at_risk_rows
    ]
    return {
        "as_of": _iso(as_of),
        "segment": segment,
        "window_minutes": window_minutes,
        "baseline_minutes": baseline_minutes,
        "minutes": [_iso(m) for m in minutes],
        "totals": {
            "touchpoints": sum(touch_now.values()),
            "started": sum(j["started"] for j in journey_rows),
            "converted": sum(j["converted"] for j in journey_rows),
            "dropped_off": sum(j["dropped_off"] for j in journey_rows),
            "negative_moments": sum(negatives_now.values()),
            "at_risk": int(at_risk_rows[0][-1]) if at_risk_rows else 0,
        },
        "traffic": [
            {"channel": channel, "touchpoints": sum(series), "per_minute": series}
            for channel, series in sorted(traffic.items())
        ],
        "drop_offs_per_minute": drops_per_minute,
        "negative_moments_per_minute": negatives_per_minute,
        "journeys": journey_rows,
        "negative_moment_rates": negative_rates,
        "negative_moments": feed,
        "at_risk": at_risk,
        "kpis": kpi_figures(
            client, db, start, as_of + timedelta(minutes=1), baseline_start, segment, named_segments
        ),
    }


def _per_100(moments: int, touchpoints: int) -> float | None:
    return round(100 * moments / touchpoints, 2) if touchpoints else None
