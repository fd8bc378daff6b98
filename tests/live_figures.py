"""The live page's figures computed independently, from the raw tables (not the rollups), and
the page's own figures in the same flat form: ``{"traffic.web": 120, "funnel.j.s.entered": 7}``.

Shared by the integration test of the queries and the browser test of the page.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.scenario import DaySimulator, Incident
from tests.helpers import REPO

Query = Callable[[str], Sequence[Sequence[Any]]]  # SQL → rows
HOUR = 3_600_000


def event_ms(event: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)


def morning(start: int) -> list[dict[str, Any]]:
    """09:00 to 12:00 of a simulated day with a payment outage from 11:00 to 11:30: its
    payments time out (30 minutes) in the last half hour."""
    outage = Incident("payment_outage", start + 11 * HOUR, start + 11 * HOUR + HOUR // 2)
    events = DaySimulator(5, start, 6000, [outage]).generate()
    return [e for e in events if 9 * HOUR <= event_ms(e) - start < 12 * HOUR]


def traffic_of(events: list[dict[str, Any]], window: int) -> dict[str, int]:
    """Touchpoints per channel in the last ``window`` minutes up to the newest event's minute:
    the live page's traffic figures, from the input alone."""
    newest = max(event_ms(e) for e in events) // 60_000 * 60_000
    low = newest - (window - 1) * 60_000
    traffic: dict[str, int] = defaultdict(int)
    for event in events:
        if event_ms(event) >= low:
            traffic[f"traffic.{event['channel']}"] += 1
    return dict(traffic)


def _ratio(numerator: int, denominator: int, digits: int = 4, scale: int = 1) -> float | None:
    return round(scale * numerator / denominator, digits) if denominator else None


def raw_figures(
    query: Query, db: str, as_of: datetime, window: int, baseline: int
) -> dict[str, Any]:
    """What the live page must show for the window of ``window`` minutes ending at the minute
    ``as_of``, with the ``baseline`` minutes before it, read from the raw tables."""
    end = f"toDateTime('{as_of:%Y-%m-%d %H:%M:%S}', 'UTC') + INTERVAL 1 MINUTE"
    lo = f"({end} - INTERVAL {window} MINUTE)"
    base_lo = f"({lo} - INTERVAL {baseline} MINUTE)"
    figures: dict[str, Any] = {}

    traffic: dict[str, int] = {}
    base_traffic: dict[str, int] = {}
    for channel, current, count in query(
        f"SELECT channel, occurred_at >= {lo}, uniqExact(event_id) FROM {db}.touchpoints "
        f"WHERE occurred_at >= {base_lo} AND occurred_at < {end} GROUP BY 1, 2"
    ):
        (traffic if int(current) else base_traffic)[channel] = int(count)
    for channel, count in traffic.items():
        figures[f"traffic.{channel}"] = count
    figures["totals.touchpoints"] = sum(traffic.values())

    flow: dict[tuple[str, str, str, bool], int] = defaultdict(int)
    for journey, stage, name, current, count in query(
        f"SELECT journey, stage, name, at >= {lo}, uniqExact(output_id) FROM {db}.journey_events "
        f"WHERE type = 'journey' AND at >= {base_lo} AND at < {end} GROUP BY 1, 2, 3, 4"
    ):
        flow[(journey, stage, name, bool(int(current)))] += int(count)

    def total(journey: str, names: tuple[str, ...], now: bool, stage: str | None = None) -> int:
        return sum(
            n
            for (j, s, name, c), n in flow.items()
            if j == journey and name in names and c is now and stage in (None, s)
        )

    entries = ("started", "stage_reached")
    for journey, stage in {(j, s) for j, s, _, _ in flow}:
        figures[f"funnel.{journey}.{stage}.entered"] = total(journey, entries, True, stage)
        figures[f"funnel.{journey}.{stage}.dropped_off"] = total(
            journey, ("dropped_off",), True, stage
        )
    for journey in {j for j, _, _, _ in flow}:
        figures[f"drop_off_rate.{journey}"] = _ratio(
            total(journey, ("dropped_off",), True), total(journey, entries, True)
        )
        figures[f"baseline_drop_off_rate.{journey}"] = _ratio(
            total(journey, ("dropped_off",), False), total(journey, entries, False)
        )
    for name in ("started", "converted", "dropped_off"):
        figures[f"totals.{name}"] = sum(
            n for (_, _, event, c), n in flow.items() if event == name and c
        )

    negatives: dict[str, int] = defaultdict(int)
    base_negatives: dict[str, int] = defaultdict(int)
    for channel, current, count in query(
        f"SELECT channel, at >= {lo}, uniqExact(output_id) FROM {db}.experience_moments "
        f"WHERE type = 'negative_moment' AND at >= {base_lo} AND at < {end} GROUP BY 1, 2"
    ):
        (negatives if int(current) else base_negatives)[channel] = int(count)
    for channel in set(traffic) | set(base_traffic) | set(negatives):
        figures[f"negative_rate.{channel}"] = _ratio(
            negatives[channel], traffic.get(channel, 0), 2, 100
        )
        figures[f"baseline_negative_rate.{channel}"] = _ratio(
            base_negatives[channel], base_traffic.get(channel, 0), 2, 100
        )
    figures["totals.negative_moments"] = sum(negatives.values())

    figures.update(_raw_kpis(query, db, end, lo, base_lo, window / baseline))

    figures["totals.at_risk"] = int(
        query(
            f"SELECT uniqExact(journey_id) FROM {db}.experience_moments "
            "WHERE type = 'moment_of_truth' AND JSONExtractBool(detail, 'passed') = 0 "
            f"AND journey_id != '' AND at >= {base_lo} AND at < {end} AND journey_id NOT IN ("
            f"SELECT journey_id FROM {db}.journey_events "
            f"WHERE name IN ('converted', 'dropped_off') AND at >= {base_lo})"
        )[0][0]
    )
    return figures


KPI_NAMES = ("csat", "nps", "first_contact_resolution", "complaint_response", "peak_end")


def _raw_kpis(
    query: Query, db: str, end: str, lo: str, base_lo: str, window_share: float
) -> dict[str, Any]:
    """The live page's experience KPIs, from the raw outputs (each once), worked out here."""
    week_lo, week_end = f"({lo} - INTERVAL 7 DAY)", f"({end} - INTERVAL 7 DAY)"
    rows = query(
        "SELECT DISTINCT output_id, multiIf("
        f"at >= {lo} AND at < {end}, 'now', at >= {base_lo} AND at < {lo}, 'baseline', "
        f"at >= {week_lo} AND at < {week_end}, 'week_before', '') AS period, name, value, "
        f"JSONExtractString(detail, 'currency') FROM {db}.experience_moments "
        "WHERE (type = 'kpi' OR type = 'score' AND name = 'peak_end') AND value IS NOT NULL "
        f"AND at >= {week_lo} AND at < {end}"
    )
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    revenue: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _, period, name, value, currency in rows:
        if not period:
            continue
        if name == "ltv_increment":
            revenue[(currency, period)].append(float(value))
        else:
            values[(name, period)].append(float(value))

    def kpi(name: str, period: str) -> float | None:
        found = values.get((name, period))
        if not found:
            return None
        n = len(found)
        if name == "csat":
            return round(sum(1 for v in found if v >= 4) / n, 4)
        if name == "nps":
            return round(100 * (sum(v >= 9 for v in found) - sum(v <= 6 for v in found)) / n, 1)
        if name == "first_contact_resolution":
            return round(sum(found) / n, 4)
        if name == "complaint_response":  # ClickHouse's quantileExact(0.5): the upper median
            return round(sorted(found)[n // 2], 1)
        return round(sum(found) / n, 2)

    figures: dict[str, Any] = {}
    for name in KPI_NAMES:
        figures[f"kpi.{name}"] = kpi(name, "now")
        figures[f"kpi.{name}.n"] = len(values.get((name, "now"), []))
        figures[f"kpi.{name}.baseline"] = kpi(name, "baseline")
        figures[f"kpi.{name}.week_before"] = kpi(name, "week_before")
    for currency in {c for c, _ in revenue}:
        base, week = revenue.get((currency, "baseline")), revenue.get((currency, "week_before"))
        figures[f"kpi.revenue.{currency}"] = round(sum(revenue.get((currency, "now"), [])), 2)
        figures[f"kpi.revenue.{currency}.n"] = len(revenue.get((currency, "now"), []))
        figures[f"kpi.revenue.{currency}.baseline"] = (
            round(sum(base) * window_share, 2) if base else None
        )
        figures[f"kpi.revenue.{currency}.week_before"] = round(sum(week), 2) if week else None
    return figures


def snapshot_figures(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The figures of a live snapshot (``GET /api/v1/live``) in the flat form, as the page
    labels them (``data-figure``); stages and channels without any activity left out."""
    figures: dict[str, Any] = {f"totals.{k}": v for k, v in snapshot["totals"].items()}
    for row in snapshot["traffic"]:
        figures[f"traffic.{row['channel']}"] = row["touchpoints"]
    for journey in snapshot["journeys"]:
        name = journey["journey"]
        figures[f"drop_off_rate.{name}"] = journey["drop_off_rate"]
        figures[f"baseline_drop_off_rate.{name}"] = journey["baseline_drop_off_rate"]
        for stage in journey["stages"]:
            figures[f"funnel.{name}.{stage['stage']}.entered"] = stage["entered"]
            figures[f"funnel.{name}.{stage['stage']}.dropped_off"] = stage["dropped_off"]
    for row in snapshot["negative_moment_rates"]:
        figures[f"negative_rate.{row['channel']}"] = row["per_100_touchpoints"]
        figures[f"baseline_negative_rate.{row['channel']}"] = row["baseline_per_100_touchpoints"]
    kpis = snapshot["kpis"]
    for name, figure in [(n, kpis[n]) for n in KPI_NAMES] + [
        (f"revenue.{row['currency']}", row) for row in kpis["revenue"]
    ]:
        figures[f"kpi.{name}"] = figure["value"]
        figures[f"kpi.{name}.n"] = figure["n"]
        figures[f"kpi.{name}.baseline"] = figure["baseline"]
        figures[f"kpi.{name}.week_before"] = figure["week_before"]
    return figures


def comparable(figures: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """``figures`` restricted to what ``truth`` can say: a journey the raw tables never saw in
    either period has no rates there, and a funnel stage without any entry or drop-off is 0."""

    def nothing(name: str, value: Any) -> bool:
        if name.startswith("funnel."):
            return bool(value == 0)
        return name.startswith(("drop_off_rate.", "baseline_drop_off_rate.")) and value is None

    return {
        name: value for name, value in figures.items() if name in truth or not nothing(name, value)
    }


def raw_figures_of_chdb(
    directory: Path, db: str, as_of: datetime, window: int, baseline: int
) -> dict[str, Any]:
    """``raw_figures`` in a fresh process (one process per chdb directory)."""
    code = (
        "import json, sys\n"
        "from datetime import datetime\n"
        "import clickhouse_connect\n"
        "from tests.live_figures import raw_figures\n"
        f"c = clickhouse_connect.get_client(dsn='chdb://{directory}')\n"
        f"as_of = datetime.fromisoformat({as_of.isoformat()!r})\n"
        f"print(json.dumps(raw_figures(lambda sql: c.query(sql).result_rows, {db!r}, as_of, "
        f"{window}, {baseline})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    if result.returncode != 0:
        raise AssertionError(f"raw figures failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))
