"""The figures of a customer journey map, read from ClickHouse (see pipeline/journeymap.py).

The map of a period is a cohort: the journeys that **started** in ``[since, until)``, with
everything they did, whenever it happened (a journey started on Monday evening that drops off
on Tuesday counts for Monday). So two periods compare like with like, and the figures of a
recent period still grow while its journeys are in progress. Each figure counts distinct ids
(``uniqExact``), so a row written twice counts once. A channel filter keeps the journeys that
entered a stage or ended on that channel (their other channels stay on the map: a journey is
cross-channel); a segment filter keeps the journeys of identified customers (the person is a
known customer, ``c:``, at some point of the journey) or of anonymous visitors only, or those of
one of the journeys file's named segments (the ``segment`` column, migration 0014:
the segment of the touchpoint that started the journey; ``other``: in none of them).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.definitions import JourneyCatalog
from pipeline.experience import GOAL_VALUE
from pipeline.journeymap import (
    Flow,
    JourneyMap,
    MomentOfTruth,
    PainPoint,
    StageFigures,
    compare,
    parse_when,
)
from pipeline.segment_rules import OTHER
from sinks.clickhouse.live import segment_sql
from sinks.clickhouse.queries import newest_minute

SEGMENTS = ("identified", "anonymous")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class MapRequestError(ValueError):
    """A map request that cannot be answered; the message names the parameter."""


def _time(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return f"toDateTime64('{moment:%Y-%m-%d %H:%M:%S.%f}', 3, 'UTC')"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_journey_map(
    client: Client,
    database: str,
    journey: str,
    stages: tuple[str, ...],
    since: datetime,
    until: datetime,
    *,
    description: str = "",
    channel: str | None = None,
    segment: str | None = None,
    named_segments: tuple[str, ...] = (OTHER,),
) -> JourneyMap:
    """``named_segments``: the journeys file's segments and ``other``
    (``SegmentRules.labels()``), which ``segment`` may name besides identified and anonymous."""
    for name, value in (("journey", journey), ("channel", channel)):
        if value is not None and not _NAME.match(value):
            raise MapRequestError(f"{name}: {value!r} is not a journey or channel name")
    if segment is not None and segment not in SEGMENTS and segment not in named_segments:
        raise MapRequestError(
            f"segment: {segment!r} is not one of {', '.join((*SEGMENTS, *named_segments))}"
        )
    if until <= since:
        raise MapRequestError("until: the period must end after it starts")
    db = database
    events = f"{db}.journey_events"
    moments = f"{db}.experience_moments"
    # the cohort: journeys that started in the period; everything they did, whenever
    cohort = [
        f"journey = '{journey}'",
        "type = 'journey'",
        "name = 'started'",
        f"at >= {_time(since)}",
        f"at < {_time(until)}",
    ]
    scope = (
        f"journey = '{journey}' AND journey_id IN "
        f"(SELECT journey_id FROM {events} WHERE {' AND '.join(cohort)})"
    )
    if segment and segment not in SEGMENTS:  # a named segment (its name checked above)
        scope += (
            f" AND journey_id IN (SELECT journey_id FROM {events} WHERE journey = '{journey}' "
            f"AND type = 'journey' AND name = 'started'"
            f"{segment_sql(segment, named_segments)})"
        )
    elif segment:
        # identified: the journey's person is a known customer at some point (an anonymous
        # start that a login later joins to the customer is the customer's journey)
        known = (
            f"journey_id IN (SELECT journey_id FROM {events} WHERE journey = '{journey}' "
            "AND type = 'journey' AND startsWith(person_id, 'c:'))"
        )
        scope += f" AND {known}" if segment == "identified" else f" AND NOT {known}"
    if channel:
        scope += (
            f" AND journey_id IN (SELECT journey_id FROM {events} "
            f"WHERE journey = '{journey}' AND type = 'journey' AND channel = '{channel}')"
        )
    in_events = f"FROM {events} WHERE type = 'journey' AND {scope}"
    in_moments = f"FROM {moments} WHERE {scope}"

    def rows(sql: str) -> list[Any]:
        return list(client.query(sql).result_rows)

    entered = dict(
        rows(
            f"SELECT stage, uniqExact(journey_id) {in_events} "
            "AND name IN ('started', 'stage_reached') GROUP BY stage"
        )
    )
    by_channel: dict[str, dict[str, int]] = defaultdict(dict)
    for stage, chan, count in rows(
        f"SELECT stage, channel, uniqExact(journey_id) {in_events} "
        "AND name IN ('started', 'stage_reached') GROUP BY stage, channel"
    ):
        by_channel[stage][chan] = int(count)
    touchpoints: dict[str, dict[str, list[tuple[str, int]]]] = defaultdict(dict)
    for stage, chan, touchpoint, count in rows(
        f"SELECT stage, channel, touchpoint, uniqExact(journey_id) AS n {in_events} "
        "AND name IN ('started', 'stage_reached') GROUP BY stage, channel, touchpoint "
        "ORDER BY n DESC, touchpoint LIMIT 3 BY stage, channel"
    ):
        touchpoints[stage].setdefault(chan, []).append((touchpoint, int(count)))
    outcomes: dict[tuple[str, str], int] = {
        (stage, name): int(count)
        for stage, name, count in rows(
            f"SELECT stage, name, uniqExact(journey_id) {in_events} "
            "AND name IN ('converted', 'dropped_off') GROUP BY stage, name"
        )
    }
    started = int(rows(f"SELECT uniqExact(journey_id) {in_events} AND name = 'started'")[0][0])

    # each journey's most intense moment at each stage it entered (module docstring)
    emotion = {
        stage: (float(mean), None if sd is None or sd != sd else float(sd))
        for stage, mean, sd in rows(
            "SELECT e.stage, avg(v), stddevSamp(v) FROM ("
            "  SELECT e.stage AS stage, if(g.goal = 1 AND -ifNull(n.neg, 0) < "
            f"{GOAL_VALUE}, {GOAL_VALUE}, ifNull(n.neg, 0)) AS v FROM ("
            f"    SELECT DISTINCT journey_id, stage {in_events} "
            "     AND name IN ('started', 'stage_reached')) AS e"
            "  LEFT JOIN ("
            f"    SELECT journey_id, stage, ifNull(min(value), 0) AS neg {in_moments} "
            "     AND type = 'negative_moment' GROUP BY journey_id, stage"
            "  ) AS n ON n.journey_id = e.journey_id AND n.stage = e.stage"
            "  LEFT JOIN ("
            f"    SELECT DISTINCT journey_id, stage, 1 AS goal {in_events} AND name = 'converted'"
            "  ) AS g ON g.journey_id = e.journey_id AND g.stage = e.stage"
            ") AS e GROUP BY e.stage"
        )
    }

    average_order = rows(
        f"SELECT avg(toFloat64(revenue)) FROM {db}.touchpoints FINAL "
        f"WHERE revenue IS NOT NULL AND event_id IN (SELECT event_id {in_events})"
    )[0][0]
    aov = None if average_order is None or average_order != average_order else float(average_order)
    pains: dict[str, list[PainPoint]] = defaultdict(list)
    for stage, kind, count, journeys, lost in rows(
        f"SELECT stage, name, uniqExact(output_id), uniqExact(journey_id), "
        f"uniqExactIf(journey_id, journey_id NOT IN (SELECT journey_id {in_events} "
        f"AND name = 'converted')) {in_moments} AND type = 'negative_moment' "
        "GROUP BY stage, name ORDER BY uniqExact(journey_id) DESC, name"
    ):
        total = int(entered.get(stage, 0))
        pains[stage].append(
            PainPoint(
                kind,
                int(count),
                int(journeys),
                int(journeys) / total if total else 0.0,
                round(int(lost) * aov, 2) if aov else None,
            )
        )
    mots: dict[str, list[MomentOfTruth]] = defaultdict(list)
    for stage, name, total, failed in rows(
        f"SELECT stage, name, uniqExact(output_id), "
        f"uniqExactIf(output_id, JSONExtractBool(detail, 'passed') = 0) {in_moments} "
        "AND type = 'moment_of_truth' GROUP BY stage, name ORDER BY name"
    ):
        mots[stage].append(MomentOfTruth(name, int(total), int(failed)))

    # paths: each journey's stage entries and outcome in time order, as transitions
    path = (
        "SELECT p.2 AS from_stage, p.3 AS from_channel, "
        "if(n.4 IN ('converted', 'dropped_off'), n.4, n.2) AS to, n.3 AS to_channel, "
        "n.1 - p.1 AS ms FROM ("
        "  SELECT arraySort(groupUniqArray((toUnixTimestamp64Milli(at), stage, channel, name, "
        f"  output_id))) AS path {in_events} "
        "  AND name IN ('started', 'stage_reached', 'converted', 'dropped_off') "
        "  GROUP BY journey_id"
        ") ARRAY JOIN arrayPopBack(path) AS p, arrayPopFront(path) AS n"
    )
    flows = [
        Flow(from_stage, from_channel, to, to_channel, int(count))
        for from_stage, from_channel, to, to_channel, count in rows(
            f"SELECT from_stage, from_channel, to, to_channel, count() FROM ({path}) "
            "GROUP BY from_stage, from_channel, to, to_channel ORDER BY count() DESC"
        )
    ]
    times = {
        stage: (float(q[0]) / 60_000, float(q[1]) / 60_000)
        for stage, q in rows(
            f"SELECT from_stage, quantilesExact(0.5, 0.9)(ms) FROM ({path}) "
            "WHERE to != 'dropped_off' GROUP BY from_stage"
        )
    }

    figures = []
    for stage in stages:
        mean, sd = emotion.get(stage, (None, None))
        median, p90 = times.get(stage, (None, None))
        stage_pains = pains.get(stage, [])
        figures.append(
            StageFigures(
                stage=stage,
                entered=int(entered.get(stage, 0)),
                entered_by_channel=by_channel.get(stage, {}),
                touchpoints=touchpoints.get(stage, {}),
                dropped_off=outcomes.get((stage, "dropped_off"), 0),
                converted=outcomes.get((stage, "converted"), 0),
                emotion=round(mean, 4) if mean is not None else None,
                emotion_sd=round(sd, 4) if sd is not None else None,
                pain_points=stage_pains,
                moments_of_truth=mots.get(stage, []),
                minutes_median=round(median, 2) if median is not None else None,
                minutes_p90=round(p90, 2) if p90 is not None else None,
                switches_after_failure=sum(
                    p.journeys for p in stage_pains if p.kind == "channel_switch_after_failure"
                ),
            )
        )
    return JourneyMap(
        journey=journey,
        description=description,
        since=_iso(since),
        until=_iso(until),
        channel=channel,
        segment=segment,
        started=started,
        converted=sum(n for (_, name), n in outcomes.items() if name == "converted"),
        dropped_off=sum(n for (_, name), n in outcomes.items() if name == "dropped_off"),
        average_order_value=round(aov, 2) if aov else None,
        stages=figures,
        flows=flows,
    )


@dataclass(frozen=True)
class MapRequest:
    """A map as asked for by the live page, the API or ``journeywatch map``: the period and,
    optionally, the period to compare it with (``before``); bounds as ``parse_when`` reads
    them, relative ones counted back from the newest touchpoint."""

    journey: str
    since: str = "24h"
    until: str = "now"
    compare_since: str | None = None
    compare_until: str | None = None
    channel: str | None = None
    segment: str | None = None


def newest_touchpoint(client: Client, database: str) -> datetime:
    """The end of the newest minute that holds touchpoints (``now`` for the map), or the
    wall clock before the first touchpoint."""
    newest = newest_minute(client, database)
    return datetime.now(UTC) if newest is None else newest + timedelta(minutes=1)


def answer_map(
    client: Client, database: str, catalog: JourneyCatalog, request: MapRequest
) -> dict[str, Any]:
    """The map (and the comparison) as JSON-ready data: ``{"map": ..., "before": ...,
    "changes": [...]}``; a bad request raises ``MapRequestError`` naming the parameter."""
    definition = next((j for j in catalog.journeys if j.name == request.journey), None)
    if definition is None:
        known = ", ".join(j.name for j in catalog.journeys)
        raise MapRequestError(f"journey: {request.journey!r} is not one of {known}")
    now = newest_touchpoint(client, database)

    def bound(name: str, text: str) -> datetime:
        try:
            return parse_when(text, now)
        except ValueError as exc:
            raise MapRequestError(f"{name}: {exc}") from None

    def one(since: str, until: str, prefix: str = "") -> JourneyMap:
        return load_journey_map(
            client,
            database,
            definition.name,
            tuple(s.name for s in definition.stages),
            bound(f"{prefix}since", since),
            bound(f"{prefix}until", until),
            description=definition.description,
            channel=request.channel,
            segment=request.segment,
            named_segments=catalog.segment_rules.labels(),
        )

    after = one(request.since, request.until)
    body: dict[str, Any] = {"map": after.to_dict(), "before": None, "changes": []}
    if request.compare_since or request.compare_until:
        if not (request.compare_since and request.compare_until):
            raise MapRequestError("compare: give both the start and the end of the period")
        before = one(request.compare_since, request.compare_until, "compare_")
        body["before"] = before.to_dict()
        body["changes"] = [
            asdict(change) | {"delta": change.delta} for change in compare(before, after)
        ]
    return body


def maps_of(body: dict[str, Any]) -> tuple[JourneyMap, JourneyMap | None]:
    """The maps of an ``answer_map`` body (as read from the API, too)."""
    before = body.get("before")
    return JourneyMap.from_dict(body["map"]), JourneyMap.from_dict(before) if before else None
