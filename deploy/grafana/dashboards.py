"""The Grafana dashboards of journeywatch, as code: `make docs` writes them to dashboards/*.json.

Four dashboards, provisioned into the "journeywatch" folder (provisioning/dashboards):

- ``jw-ops``: ops overview: traffic, outcomes, rates against their baselines, pipeline health.
- ``jw-journey``: one journey, stage by stage and channel by channel.
- ``jw-oncall``: what an alert links to: the spike, its segments, example journeys, causes.
- ``jw-analysts``: the customer-experience KPIs (CSAT, NPS, first-contact resolution,
  complaint response time, conversion, peak-end scores, revenue).

Every query here is run by the tests against a real Prometheus (tests/e2e/test_alerting.py)
or the ClickHouse schema (tests/integration/test_dashboards.py) and must return data.
Template variables hold label values, with ``.*`` for All, so a query filters with
``=~"$channel"`` in PromQL and ``match(channel, '^(${channel})$')`` in ClickHouse SQL.
ClickHouse queries use the data source's macros ``$__timeFilter(column)``,
``$__timeInterval(column)``, ``$__fromTime`` and ``$__toTime``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}
DB = "journeywatch"
SCHEMA_VERSION = 39

Panel = dict[str, Any]


def prom(expr: str, legend: str = "", instant: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": PROMETHEUS, "expr": expr, "legendFormat": legend}
    if instant:
        target |= {"instant": True, "range": False, "format": "table"}
    return target


def sql(raw: str, time_series: bool = False) -> dict[str, Any]:
    return {
        "datasource": CLICKHOUSE,
        "editorType": "sql",
        "format": 0 if time_series else 1,  # 0: time series, 1: table
        "queryType": "timeseries" if time_series else "table",
        "rawSql": " ".join(raw.split()),
    }


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    width: int = 12,
    height: int = 8,
    description: str = "",
    unit: str | None = None,
    links: list[dict[str, str]] | None = None,
    stacked: bool = False,
) -> Panel:
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    if stacked:
        defaults["custom"] = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30}
    datasource = targets[0]["datasource"]
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": datasource,
        "targets": [target | {"refId": chr(ord("A") + n)} for n, target in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
        "links": links or [],
        "gridPos": {"w": width, "h": height},
    }


def row(title: str) -> Panel:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": 24, "h": 1},
    }


def variable(name: str, label: str, query: str, include_all: bool = True) -> dict[str, Any]:
    var: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROMETHEUS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,  # on time range change
        "sort": 1,
        "includeAll": include_all,
        "multi": False,
        "current": {},
        "options": [],
    }
    if include_all:
        var["allValue"] = ".*"
    return var


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    variables: list[dict[str, Any]],
    time_from: str = "now-6h",
) -> dict[str, Any]:
    """A dashboard with its panels laid out left to right, top to bottom, on the 24-column grid."""
    x = y = line_height = 0
    for number, item in enumerate(panels, start=1):
        grid = item["gridPos"]
        if x + grid["w"] > 24:
            x, y, line_height = 0, y + line_height, 0
        grid |= {"x": x, "y": y}
        item["id"] = number
        x += grid["w"]
        line_height = max(line_height, grid["h"])
        if grid["w"] == 24:
            x, y, line_height = 0, y + grid["h"], 0
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["journeywatch"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "title": "journeywatch dashboards",
                "type": "dashboards",
                "tags": ["journeywatch"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            },
        ],
        "panels": panels,
    }


RATE = "[$__rate_interval]"


def dropoffs_per_minute(selector: str, by: str = "") -> str:
    """Drop-offs per minute net of those retracted (a journey reported dropped off that late
    touchpoints then converted; jw_journeys_dropoffs_retracted_total, same labels), as the
    alert rules count them. A segment with no retraction yet has no such series: 0 instead."""
    group = f"sum by ({by}) " if by else "sum"
    dropped = f"{group}(rate(jw_journeys_dropped_off_total{{{selector}}}{RATE}))"
    retracted = f"{group}(rate(jw_journeys_dropoffs_retracted_total{{{selector}}}{RATE}))"
    return f"({dropped} - ({retracted} or 0 * {dropped})) * 60"


JOURNEY_VAR = variable(
    "journey", "Journey", "label_values(jw_journey_stage_entered_total, journey)", False
)
CHANNEL_VAR = variable("channel", "Channel", "label_values(jw_events_accepted_total, channel)")
STAGE_VAR = variable(
    "stage", "Stage", 'label_values(jw_journey_stage_entered_total{journey=~"$journey"}, stage)'
)
ONCALL_JOURNEY_VAR = variable(
    "journey", "Journey", "label_values(jw_journey_stage_entered_total, journey)"
)
# Where browsers reach the sink's pages (docker-compose publishes it on 8080): the on-call
# dashboard's example journeys link to their customer's timeline there. A textbox, so that an
# install behind another address sets it once (dashboard settings, or ?var-journeywatch_url=).
SINK_URL_VAR: dict[str, Any] = {
    "name": "journeywatch_url",
    "label": "journeywatch address",
    "type": "textbox",
    "query": "http://localhost:8080",
    "current": {"text": "http://localhost:8080", "value": "http://localhost:8080"},
    "options": [],
    "hide": 2,  # not in the variable bar: set once per install
}
CUSTOMER_LINK = {
    "title": "Customer timeline of ${__value.raw}",
    "url": "${journeywatch_url}/customers/${__value.raw:percentencode}",
    "targetBlank": True,
}
JOURNEY_LINK = {
    "title": "Drill down into ${__field.labels.journey}",
    "url": "/d/jw-journey?var-journey=${__field.labels.journey}&${__url_time_range}",
}


def ops() -> dict[str, Any]:
    channel = 'channel=~"$channel"'
    panels = [
        row("Now"),
        panel(
            "stat",
            "Touchpoints accepted",
            [prom(f"sum(rate(jw_events_accepted_total{{{channel}}}{RATE}))")],
            width=4,
            height=4,
            unit="reqps",
            description="Validated touchpoints per second, all workers.",
        ),
        panel(
            "stat",
            "Journeys in progress",
            [prom("sum(jw_active_journeys)")],
            width=4,
            height=4,
            unit="short",
        ),
        panel(
            "stat",
            "Journeys converted per minute",
            [prom(f"sum(rate(jw_journeys_converted_total{{{channel}}}{RATE})) * 60")],
            width=4,
            height=4,
            unit="short",
        ),
        panel(
            "stat",
            "Drop-offs per minute",
            [prom(dropoffs_per_minute(channel))],
            width=4,
            height=4,
            unit="short",
        ),
        panel(
            "stat",
            "Unprocessed records (lag)",
            [prom("sum(jw_consumer_lag)")],
            width=4,
            height=4,
            unit="short",
            description="Sum over topics and partitions.",
        ),
        panel(
            "stat",
            "Alerts firing",
            [prom('count(ALERTS{alertstate="firing"}) or vector(0)')],
            width=4,
            height=4,
            unit="short",
        ),
        panel(
            "table",
            "Alerts firing now",
            [prom('ALERTS{alertstate="firing"}', instant=True)],
            width=24,
            height=6,
            description="Each alert's annotations link to its runbook and the on-call "
            "dashboard for its segment.",
        ),
        row("Customer experience"),
        panel(
            "timeseries",
            "Touchpoints per second by channel",
            [
                prom(
                    f"sum by (channel) (rate(jw_events_accepted_total{{{channel}}}{RATE}))",
                    "{{channel}}",
                )
            ],
            unit="reqps",
            stacked=True,
        ),
        panel(
            "timeseries",
            "Drop-off ratio by journey, against its 6-hour baseline",
            [
                prom(
                    "sum by (journey) (jw:journey_dropped_off:rate10m)"
                    " / (sum by (journey) (jw:journey_stage_entered:rate10m) > 0)",
                    "{{journey}}",
                ),
                prom(
                    "avg by (journey) (jw:journey_dropoff_ratio:baseline6h)", "{{journey}} baseline"
                ),
            ],
            unit="percentunit",
            links=[JOURNEY_LINK],
            description="Drop-offs per stage entry over 10 minutes (as the alert rules).",
        ),
        panel(
            "timeseries",
            "Negative moments per touchpoint by channel",
            [
                prom(
                    f"sum by (channel) (jw:negative_moments_per_touchpoint:10m{{{channel}}})",
                    "{{channel}}",
                ),
                prom(
                    "sum by (channel) "
                    f"(jw:negative_moments_per_touchpoint:baseline6h{{{channel}}})",
                    "{{channel}} baseline",
                ),
            ],
            unit="percentunit",
        ),
        panel(
            "timeseries",
            "Negative moments per minute by kind",
            [
                prom(
                    f"sum by (kind) (rate(jw_negative_moments_total{{{channel}}}{RATE})) * 60",
                    "{{kind}}",
                )
            ],
            stacked=True,
        ),
        panel(
            "timeseries",
            "Touchpoints per minute by channel (ClickHouse)",
            [
                sql(
                    f"""
            SELECT $__timeInterval(minute) AS time, channel, sum(touchpoints) AS touchpoints
            FROM {DB}.touchpoints_1m
            WHERE $__timeFilter(minute) AND match(channel, '^(${{channel}})$')
            GROUP BY time, channel ORDER BY time""",
                    time_series=True,
                )
            ],
            width=24,
            description="What ClickHouse holds: compare with the Prometheus panel above to "
            "see the sink's delay.",
        ),
        row("Pipeline health"),
        panel(
            "timeseries",
            "Rejected events per second by reason",
            [
                prom(
                    f"sum by (reason) (rate(jw_events_rejected_total{{{channel}}}{RATE}))",
                    "{{reason}}",
                )
            ],
            unit="reqps",
            width=8,
            description="Sent to the dead-letter topic; see failed_events in ClickHouse.",
        ),
        panel(
            "timeseries",
            "Unprocessed records by topic",
            [prom("sum by (topic) (jw_consumer_lag)", "{{topic}}")],
            width=8,
        ),
        panel(
            "timeseries",
            "Event time to output, 99th percentile",
            [
                prom(
                    "histogram_quantile(0.99, sum by (le, type) "
                    f"(rate(jw_output_latency_seconds_bucket{RATE})))",
                    "{{type}}",
                )
            ],
            unit="s",
            width=8,
        ),
        panel(
            "timeseries",
            "Collector: requests per second by status",
            [prom(f"sum by (status) (rate(jw_collector_requests_total{RATE}))", "{{status}}")],
            unit="reqps",
            width=8,
        ),
        panel(
            "timeseries",
            "Collector: answer time, 99th percentile",
            [
                prom(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(jw_collector_request_seconds_bucket{RATE})))",
                    "p99",
                )
            ],
            unit="s",
            width=8,
        ),
        panel(
            "timeseries",
            "Sink: rows written per second by table",
            [
                prom(f"sum by (table) (rate(jw_sink_rows_written_total{RATE}))", "{{table}}"),
                prom(
                    f"sum by (table) (rate(jw_sink_write_errors_total{RATE}))", "{{table}} errors"
                ),
            ],
            unit="short",
            width=8,
        ),
        panel(
            "table",
            "Processes up",
            [prom('sum by (job) (up{job=~"journeywatch.*"})', instant=True)],
            width=24,
            height=5,
        ),
    ]
    return dashboard(
        "jw-ops",
        "journeywatch: ops overview",
        "Traffic, journey outcomes, rates against their baselines, and pipeline health.",
        panels,
        [CHANNEL_VAR],
        "now-3h",
    )


def journey() -> dict[str, Any]:
    selector = 'journey="$journey", channel=~"$channel"'
    in_sql = "journey = '${journey}' AND match(channel, '^(${channel})$') AND $__timeFilter(minute)"
    panels = [
        panel(
            "timeseries",
            "Stage entries per minute",
            [
                prom(
                    "sum by (stage) "
                    f"(rate(jw_journey_stage_entered_total{{{selector}}}{RATE})) * 60",
                    "{{stage}}",
                )
            ],
            width=8,
        ),
        panel(
            "timeseries",
            "Drop-offs per minute by stage",
            [prom(dropoffs_per_minute(selector, "stage"), "{{stage}}")],
            width=8,
        ),
        panel(
            "bargauge",
            "Journeys in progress by current stage",
            [prom('sum by (stage) (jw_active_journeys{journey="$journey"})', "{{stage}}")],
            width=8,
        ),
        panel(
            "table",
            "Drop-off ratio now and normally, by stage and channel",
            [
                prom(f"jw:journey_dropoff_ratio:10m{{{selector}}}", instant=True),
                prom(f"jw:journey_dropoff_ratio:baseline6h{{{selector}}}", instant=True),
            ],
            width=12,
            unit="percentunit",
            description="A: the last 10 minutes; B: the 6 hours before. Rows are stage by channel.",
        ),
        panel(
            "timeseries",
            "Moments of truth: failure ratio",
            [prom(f"jw:moment_of_truth_failure_ratio:10m{{{selector}}}", "{{moment}} {{channel}}")],
            width=12,
            unit="percentunit",
        ),
        panel(
            "table",
            "Funnel in the time range (ClickHouse)",
            [
                sql(f"""
            SELECT stage,
                sumIf(journeys, name IN ('started', 'stage_reached')) AS entered,
                sumIf(journeys, name = 'dropped_off') AS dropped_off,
                sumIf(journeys, name = 'converted') AS converted,
                round(dropped_off / nullIf(entered, 0), 4) AS drop_off_rate
            FROM {DB}.journey_flow_1m WHERE {in_sql}
            GROUP BY stage ORDER BY entered DESC""")
            ],
            width=12,
        ),
        panel(
            "table",
            "Drop-off rate by stage and channel (ClickHouse)",
            [
                sql(f"""
            SELECT stage, channel,
                sumIf(journeys, name IN ('started', 'stage_reached')) AS entered,
                sumIf(journeys, name = 'dropped_off') AS dropped_off,
                round(dropped_off / nullIf(entered, 0), 4) AS drop_off_rate
            FROM {DB}.journey_flow_1m WHERE {in_sql}
            GROUP BY stage, channel ORDER BY drop_off_rate DESC""")
            ],
            width=12,
        ),
        panel(
            "table",
            "Negative moments by stage and kind (ClickHouse)",
            [
                sql(f"""
            SELECT stage, name AS kind, sum(moments) AS moments
            FROM {DB}.experience_moments_1m
            WHERE type = 'negative_moment' AND {in_sql}
            GROUP BY stage, kind ORDER BY moments DESC""")
            ],
            width=12,
        ),
        panel(
            "table",
            "Time to convert (ClickHouse)",
            [
                sql(f"""
            SELECT channel, sum(n) AS conversions,
                round(arrayReduce('quantileExact(0.5)', arrayFlatten(groupArray(values))) / 60, 1)
                    AS median_minutes,
                round(arrayReduce('quantileExact(0.9)', arrayFlatten(groupArray(values))) / 60, 1)
                    AS p90_minutes
            FROM {DB}.kpis_1h
            WHERE name = 'conversion' AND journey = '${{journey}}'
                AND match(channel, '^(${{channel}})$') AND $__timeFilter(hour)
            GROUP BY channel ORDER BY conversions DESC""")
            ],
            width=12,
            description="From a journey's first touchpoint to its goal, by the channel of "
            "the goal.",
        ),
    ]
    return dashboard(
        "jw-journey",
        "journeywatch: journey drill-down",
        "One journey, stage by stage and channel by channel.",
        panels,
        [JOURNEY_VAR, CHANNEL_VAR],
    )


def oncall() -> dict[str, Any]:
    segment = 'journey=~"$journey", stage=~"$stage", channel=~"$channel"'
    in_sql = (
        "match(journey, '^(${journey})$') AND match(stage, '^(${stage})$') "
        "AND match(channel, '^(${channel})$') AND $__timeFilter(at)"
    )
    panels = [
        panel(
            "timeseries",
            "The spike: drop-off ratio against its baseline",
            [
                prom(f"jw:journey_dropoff_ratio:10m{{{segment}}}", "{{stage}} {{channel}} now"),
                prom(
                    f"jw:journey_dropoff_ratio:baseline6h{{{segment}}}",
                    "{{stage}} {{channel}} baseline",
                ),
            ],
            width=16,
            unit="percentunit",
            description="What JourneyDropOffSpike compares: the last 10 minutes against the "
            "6 hours before.",
        ),
        panel(
            "table",
            "Alerts firing for this segment",
            [prom(f'ALERTS{{alertstate="firing", {segment}}}', instant=True)],
            width=8,
        ),
        panel(
            "timeseries",
            "The segment's volume per minute",
            [
                prom(
                    f"sum(rate(jw_journey_stage_entered_total{{{segment}}}{RATE})) * 60", "entered"
                ),
                prom(dropoffs_per_minute(segment), "dropped off"),
            ],
            width=8,
            description="Few entries make a noisy ratio: the alert needs at least 30.",
        ),
        panel(
            "table",
            "Which channels: this stage now and normally",
            [
                prom(
                    'jw:journey_dropoff_ratio:10m{journey=~"$journey", stage=~"$stage"}',
                    instant=True,
                ),
                prom(
                    'jw:journey_dropoff_ratio:baseline6h{journey=~"$journey", stage=~"$stage"}',
                    instant=True,
                ),
            ],
            width=8,
            unit="percentunit",
            description="One channel or all of them? A: now, B: baseline.",
        ),
        panel(
            "timeseries",
            "Negative moments per touchpoint on the channel",
            [
                prom(
                    'jw:negative_moments_per_touchpoint:10m{channel=~"$channel"}',
                    "{{kind}} {{channel}}",
                )
            ],
            width=8,
            unit="percentunit",
        ),
        panel(
            "table",
            "Why: outcome reasons of the failing touchpoints (ClickHouse)",
            [
                sql(f"""
            SELECT t.touchpoint AS touchpoint, t.outcome AS outcome,
                t.outcome_reason AS reason, count() AS touchpoints
            FROM {DB}.touchpoints AS t
            WHERE t.event_id IN (
                SELECT event_id FROM {DB}.experience_moments
                WHERE type = 'negative_moment' AND {in_sql})
                AND $__timeFilter(t.occurred_at)
            GROUP BY touchpoint, outcome, reason ORDER BY touchpoints DESC LIMIT 20""")
            ],
            width=12,
            description="The touchpoints behind the segment's negative moments, by "
            "the reason their source gave (e.g. provider_unavailable).",
        ),
        panel(
            "table",
            "Negative moments in the segment by kind (ClickHouse)",
            [
                sql(f"""
            SELECT name AS kind, touchpoint, uniqExact(output_id) AS moments
            FROM {DB}.experience_moments
            WHERE type = 'negative_moment' AND {in_sql}
            GROUP BY kind, touchpoint ORDER BY moments DESC LIMIT 20""")
            ],
            width=12,
        ),
        panel(
            "table",
            "Example journeys that dropped off here (ClickHouse)",
            [
                sql(f"""
            SELECT d.at AS dropped_at, d.journey AS journey, d.stage AS stage,
                d.channel AS channel, d.journey_id AS journey_id, d.person_id AS person,
                m.kinds AS negative_moments
            FROM (
                SELECT at, journey, stage, channel, journey_id, person_id
                FROM {DB}.journey_events FINAL
                WHERE type = 'journey' AND name = 'dropped_off' AND {in_sql}
                ORDER BY at DESC LIMIT 20) AS d
            LEFT JOIN (
                SELECT journey_id, arrayStringConcat(groupUniqArray(name), ', ') AS kinds
                FROM {DB}.experience_moments
                WHERE type = 'negative_moment' AND $__timeFilter(at)
                GROUP BY journey_id) AS m ON m.journey_id = d.journey_id
            ORDER BY dropped_at DESC""")
            ],
            width=24,
            description="The newest drop-offs of the segment, with what went wrong in each "
            "journey; person is the pseudonymous person id (no e-mail or phone), linked to "
            "that customer's timeline on journeywatch's pages.",
        )
        | {
            "fieldConfig": {
                "defaults": {},
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": "person"},
                        "properties": [{"id": "links", "value": [CUSTOMER_LINK]}],
                    }
                ],
            }
        },
    ]
    return dashboard(
        "jw-oncall",
        "journeywatch: on-call",
        "What an alert links to: the spike, the segments it touches, why, and example journeys.",
        panels,
        [ONCALL_JOURNEY_VAR, STAGE_VAR, CHANNEL_VAR, SINK_URL_VAR],
        "now-3h",
    )


def analysts() -> dict[str, Any]:
    # KPIs from the hourly rollup (kpis_1h: exact under re-emitted outputs), never the raw table
    kpi = f"FROM {DB}.kpis_1h WHERE $__timeFilter(hour)"
    values = "arrayFlatten(groupArray(values))"
    panels = [
        panel(
            "stat",
            "CSAT (1 to 5)",
            [sql(f"SELECT round(sum(total) / sum(n), 2) AS csat {kpi} AND name = 'csat'")],
            width=4,
            height=4,
        ),
        panel(
            "stat",
            "NPS",
            [
                sql(f"""
            SELECT round(100 * (sum(arrayCount(v -> v >= 9, values))
                - sum(arrayCount(v -> v <= 6, values))) / sum(n), 1) AS nps
            {kpi} AND name = 'nps'""")
            ],
            width=4,
            height=4,
            description="Promoters (9-10) minus detractors (0-6), in percent of answers.",
        ),
        panel(
            "stat",
            "First-contact resolution",
            [
                sql(
                    f"SELECT round(sum(total) / sum(n), 4) AS fcr {kpi} "
                    "AND name = 'first_contact_resolution'"
                )
            ],
            width=4,
            height=4,
            unit="percentunit",
            description="Support cases resolved in their first contact.",
        ),
        panel(
            "stat",
            "Complaint response time, median",
            [
                sql(
                    f"SELECT arrayReduce('quantileExact(0.5)', {values}) AS median {kpi} "
                    "AND name = 'complaint_response'"
                )
            ],
            width=4,
            height=4,
            unit="s",
        ),
        panel(
            "stat",
            "Complaint response time, 90th percentile",
            [
                sql(
                    f"SELECT arrayReduce('quantileExact(0.9)', {values}) AS p90 {kpi} "
                    "AND name = 'complaint_response'"
                )
            ],
            width=4,
            height=4,
            unit="s",
        ),
        panel(
            "stat",
            "Conversion rate",
            [
                sql(f"""
            SELECT round(sumIf(journeys, name = 'converted')
                / nullIf(sumIf(journeys, name = 'started'), 0), 4) AS conversion
            FROM {DB}.journey_flow_1m WHERE $__timeFilter(minute)""")
            ],
            width=4,
            height=4,
            unit="percentunit",
        ),
        panel(
            "timeseries",
            "CSAT by channel",
            [
                sql(
                    f"""
            SELECT $__timeInterval(hour) AS time, channel, round(sum(total) / sum(n), 2) AS csat
            {kpi} AND name = 'csat' GROUP BY time, channel ORDER BY time""",
                    time_series=True,
                )
            ],
        ),
        panel(
            "table",
            "NPS by channel",
            [
                sql(f"""
            SELECT channel, sum(n) AS answers,
                round(100 * (sum(arrayCount(v -> v >= 9, values))
                    - sum(arrayCount(v -> v <= 6, values))) / answers, 1) AS nps
            {kpi} AND name = 'nps' GROUP BY channel ORDER BY answers DESC""")
            ],
        ),
        panel(
            "table",
            "First-contact resolution by journey and channel",
            [
                sql(f"""
            SELECT journey, channel, sum(n) AS cases, round(sum(total) / cases, 4) AS fcr_rate
            {kpi} AND name = 'first_contact_resolution'
            GROUP BY journey, channel ORDER BY cases DESC""")
            ],
        ),
        panel(
            "table",
            "Complaint response time by channel of the answer",
            [
                sql(f"""
            SELECT channel, sum(n) AS complaints,
                round(arrayReduce('quantileExact(0.5)', {values}) / 3600, 2) AS median_hours,
                round(arrayReduce('quantileExact(0.9)', {values}) / 3600, 2) AS p90_hours
            {kpi} AND name = 'complaint_response'
            GROUP BY channel ORDER BY complaints DESC""")
            ],
        ),
        panel(
            "table",
            "Conversion by journey",
            [
                sql(f"""
            SELECT journey, sumIf(journeys, name = 'started') AS started,
                sumIf(journeys, name = 'converted') AS converted,
                round(converted / nullIf(started, 0), 4) AS conversion_rate
            FROM {DB}.journey_flow_1m WHERE $__timeFilter(minute)
            GROUP BY journey ORDER BY started DESC""")
            ],
        ),
        panel(
            "table",
            "Peak-end experience score by journey and outcome",
            [
                sql(f"""
            SELECT journey, JSONExtractString(detail, 'outcome') AS outcome,
                count() AS journeys, round(avg(value), 3) AS mean_score
            FROM {DB}.experience_moments FINAL
            WHERE type = 'score' AND name = 'peak_end' AND $__timeFilter(at)
            GROUP BY journey, outcome ORDER BY journey, outcome""")
            ],
            description="-1 (worst) to +1 (best); see docs/journey-engine.md.",
        ),
        panel(
            "table",
            "Revenue by channel",
            [
                sql(f"""
            SELECT channel, sum(n) AS purchases, round(sum(total), 2) AS revenue
            {kpi} AND name = 'ltv_increment'
            GROUP BY channel ORDER BY revenue DESC""")
            ],
            width=24,
            height=6,
            description="Purchases by known customers (each one an ltv_increment KPI).",
        ),
    ]
    return dashboard(
        "jw-analysts",
        "journeywatch: customer-experience KPIs",
        "CSAT, NPS, first-contact resolution, complaint response time, conversion and "
        "peak-end scores, from ClickHouse.",
        panels,
        [],
        "now-7d",
    )


def build() -> dict[str, dict[str, Any]]:
    """File name → dashboard."""
    return {
        f"{board['uid'].removeprefix('jw-')}.json": board
        for board in (ops(), journey(), oncall(), analysts())
    }


def main() -> None:
    out = HERE / "dashboards"
    for stale in out.glob("*.json"):
        stale.unlink()
    for name, board in build().items():
        (out / name).write_text(json.dumps(board, indent=2) + "\n")


if __name__ == "__main__":
    main()
