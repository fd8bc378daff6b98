"""ClickHouse (embedded chdb): the sink's writer against a bare clickhouse-connect insert of the
same rows, and the dashboard panels' rollup queries over 10 million touchpoints."""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.simulator import SimpleTrafficSource
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrations import apply_migrations
from sinks.clickhouse.rows import TOUCHPOINT_COLUMNS, touchpoint_row
from sinks.clickhouse.writer import ClickHouseWriter, PartitionBatch

ROWS = 200_000
BATCH = 5_000  # the sink's default batch size
ROUNDS = 3
BIG = 10_000_000
DAYS = 30
NOW = datetime(2026, 11, 2, tzinfo=UTC)

# The panels a dashboard or the live page refreshes, as they read the rollups (Grafana's
# time filter written out for the last day of the generated month).
PANELS = {
    "traffic per minute by channel, last 24 h (ops dashboard)": (
        "SELECT toStartOfInterval(minute, INTERVAL 60 second) AS time, channel, "
        "sum(touchpoints) FROM {db}.touchpoints_1m "
        "WHERE minute >= {end} - INTERVAL 1 DAY AND minute < {end} "
        "GROUP BY time, channel ORDER BY time"
    ),
    "touchpoints by channel and outcome, last 7 days": (
        "SELECT channel, outcome, sum(touchpoints) FROM {db}.touchpoints_1m "
        "WHERE minute >= {end} - INTERVAL 7 DAY AND minute < {end} GROUP BY channel, outcome"
    ),
    "traffic per hour by channel, whole month": (
        "SELECT toStartOfHour(minute) AS hour, channel, sum(touchpoints) "
        "FROM {db}.touchpoints_1m GROUP BY hour, channel ORDER BY hour"
    ),
}


def _rows(count: int) -> list[list[Any]]:
    rows = []
    for n, data in enumerate(SimpleTrafficSource(seed=9).events(NOW, count)):
        event = decode_touchpoint(orjson.dumps(data), NOW)
        assert isinstance(event, TouchpointEvent)
        rows.append(
            touchpoint_row(orjson.loads(event.to_json()), "touchpoints.by_person", "b", 0, n)
        )
    return rows


def _writes(client: Any, rows: list[list[Any]]) -> tuple[float, float]:
    """Rows per second, best of ``ROUNDS``: the bare insert, then the sink's writer, alternating
    so that both see the same machine."""
    bare_best = writer_best = 0.0
    for round_ in range(ROUNDS):
        for kind in ("bare", "writer"):
            db = f"bench_{kind}_{round_}"
            client.command(f"DROP DATABASE IF EXISTS {db}")
            apply_migrations(client, db, retention_days=3650)
            writer = ClickHouseWriter(client, db)
            started = time.perf_counter()
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                if kind == "bare":
                    client.insert(f"{db}.touchpoints", chunk, column_names=list(TOUCHPOINT_COLUMNS))
                else:
                    offsets = list(range(start, start + len(chunk)))
                    writer.write(
                        "touchpoints",
                        TOUCHPOINT_COLUMNS,
                        PartitionBatch("touchpoints.by_person", "b", 0, offsets, chunk),
                    )
            rate = len(rows) / (time.perf_counter() - started)
            stored = client.query(f"SELECT count() FROM {db}.touchpoints").result_rows[0][0]
            assert stored == len(rows), (kind, stored)
            client.command(f"DROP DATABASE {db}")
            if kind == "bare":
                bare_best = max(bare_best, rate)
            else:
                writer_best = max(writer_best, rate)
    return bare_best, writer_best


def _big_month(client: Any, db: str) -> float:
    """10 million touchpoints over 30 days, generated inside ClickHouse (the materialized view
    fills the rollup as they are inserted); returns the seconds it took."""
    start = NOW - timedelta(days=DAYS)
    started = time.perf_counter()
    client.command(
        f"INSERT INTO {db}.touchpoints (event_id, occurred_at, received_at, channel, "
        "touchpoint, action, outcome, device_id, source, schema_version, kafka_topic, "
        "kafka_topic_id, kafka_partition, kafka_offset) "
        "SELECT toString(generateUUIDv4()), "
        f"toDateTime64('{start:%Y-%m-%d %H:%M:%S}', 3, 'UTC') + "
        f"toIntervalMillisecond(intDiv(number * {DAYS * 86_400_000}, {BIG})), "
        "now64(3), "
        "['web', 'app', 'call_center', 'store', 'email'][number % 5 + 1], "
        "['home.view', 'product.view', 'cart.add', 'checkout.payment', 'agent.talk']"
        "[number % 7 % 5 + 1], "
        "'view', if(number % 37 = 0, 'error', 'success'), concat('d-', toString(number % 500000)), "
        "'bench', 1, 'touchpoints.by_person', 'big', 0, number "
        f"FROM numbers({BIG}) SETTINGS max_insert_block_size = 1000000"
    )
    return time.perf_counter() - started


def run() -> str:
    client = connect(f"chdb://{tempfile.mkdtemp(prefix='jw-bench-ch-')}")
    rows = _rows(ROWS)
    bare, writer = _writes(client, rows)

    db = "bench_big"
    apply_migrations(client, db, retention_days=3650)
    fill_s = _big_month(client, db)
    total, rollup_rows = client.query(
        f"SELECT (SELECT count() FROM {db}.touchpoints), "
        f"(SELECT count() FROM {db}.touchpoint_rollup_1m)"
    ).result_rows[0]
    assert total == BIG, total
    end = f"toDateTime('{NOW:%Y-%m-%d %H:%M:%S}', 'UTC')"
    panel_rows = []
    for title, sql in PANELS.items():
        query = sql.format(db=db, end=end)
        client.query(query)  # warm
        times = []
        for _ in range(7):
            started = time.perf_counter()
            result = client.query(query).result_rows
            times.append((time.perf_counter() - started) * 1000)
        assert result, title
        panel_rows.append(f"| {title} | {statistics.median(times):.1f} | {max(times):.1f} |")
    raw_sql = (
        f"SELECT channel, count() FROM {db}.touchpoints "
        f"WHERE occurred_at >= {end} - INTERVAL 7 DAY GROUP BY channel"
    )
    raw_times = []
    for _ in range(3):
        started = time.perf_counter()
        client.query(raw_sql)
        raw_times.append((time.perf_counter() - started) * 1000)
    return (
        "## ClickHouse: the sink's writer and the dashboards' rollups\n\n"
        "Command: `make bench` (suite `benchmarks/clickhouse.py`), embedded ClickHouse (chdb), "
        "one process.\n\n"
        f"**Writer** ({ROWS:,} validated touchpoints in batches of {BATCH:,}, best of "
        f"{ROUNDS}, alternating, fresh tables each round): the sink's `ClickHouseWriter` "
        "(high-water read, deduplication token, synchronous insert) against a bare "
        "`client.insert` of the same rows (target: at least 80%).\n\n"
        "| what | rows/s | ratio to baseline |\n| --- | ---: | ---: |\n"
        f"| baseline: bare clickhouse-connect insert | {bare:,.0f} | 1.00 |\n"
        f"| `ClickHouseWriter.write` | {writer:,.0f} | {writer / bare:.2f} |\n\n"
        f"**Rollup panels over {BIG:,} touchpoints** ({DAYS} days, generated in ClickHouse in "
        f"{fill_s:.0f} s; the materialized view keeps {rollup_rows:,} rollup rows): query time "
        "in ms, median and worst of 7 after a warm-up (target: under 100 ms).\n\n"
        "| panel | median ms | worst ms |\n| --- | ---: | ---: |\n"
        + "\n".join(panel_rows)
        + f"\n| for comparison: the 7-day count by channel from the raw table | "
        f"{statistics.median(raw_times):.1f} | {max(raw_times):.1f} |\n"
    )
