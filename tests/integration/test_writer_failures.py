"""The ClickHouse writer when ClickHouse fails mid-stream: unreachable for a while, an insert
that lands but whose answer is lost, and the sink restarting and receiving again what it had
already written. The end state must be exactly the ground truth: every row once, the rollups
exact.

ClickHouse itself is real (chdb); only its failures are simulated, by a proxy in front of the
client, because no ClickHouse server can be stopped and started here (PLATFORM.md: Debian's
server is too old for clickhouse-connect).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.scenario import DaySimulator
from sinks.clickhouse.migrations import apply_migrations
from sinks.clickhouse.rows import OUTPUT_COLUMNS, TOUCHPOINT_COLUMNS
from sinks.clickhouse.writer import ClickHouseWriter, PartitionBatch
from tests.helpers import ClickHouse
from tests.integration.test_live_figures import engine_rows

pytestmark = pytest.mark.integration

COLUMNS = {
    "touchpoints": TOUCHPOINT_COLUMNS,
    "journey_events": OUTPUT_COLUMNS,
    "experience_moments": OUTPUT_COLUMNS,
}
PARTITIONS = 3
BATCH = 250


class Unreachable(ConnectionError):
    pass


class FailingClickHouse:
    """The real client, behind a switchboard: ``down`` refuses every call before it reaches
    ClickHouse; ``lose_ack`` lets the next inserts land and then raises, as when the connection
    drops before the answer arrives."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down = False
        self.lose_ack = 0
        self.refused = 0
        self.acks_lost = 0

    def query(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            self.refused += 1
            raise Unreachable("Connection refused (simulated)")
        return self.client.query(*args, **kwargs)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            self.refused += 1
            raise Unreachable("Connection refused (simulated)")
        result = self.client.insert(*args, **kwargs)
        if self.lose_ack:
            self.lose_ack -= 1
            self.acks_lost += 1
            raise Unreachable("Connection reset by peer after the insert (simulated)")
        return result


def batches(tables: dict[str, list[list[Any]]]) -> list[tuple[str, PartitionBatch]]:
    """Every row in per-partition batches, partitions interleaved as a consumer receives them;
    a row's offset is its position in its partition."""
    out = []
    for table, rows in tables.items():
        by_partition: dict[int, list[list[Any]]] = {p: [] for p in range(PARTITIONS)}
        for n, row in enumerate(rows):
            by_partition[n % PARTITIONS].append(row)
        for partition, part_rows in by_partition.items():
            for row_offset, row in enumerate(part_rows):
                # kafka_topic, kafka_topic_id, kafka_partition, kafka_offset
                row[-4:] = [table, "t1", partition, row_offset]
            for start in range(0, len(part_rows), BATCH):
                chunk = part_rows[start : start + BATCH]
                offsets = [row[-1] for row in chunk]
                out.append((table, PartitionBatch(table, "t1", partition, offsets, chunk)))
    out.sort(key=lambda item: (item[1].offsets[0], item[0], item[1].partition))
    return out


def write_until_done(
    writer: ClickHouseWriter,
    table: str,
    batch: PartitionBatch,
    between_attempts: Callable[[int], None],
) -> int:
    """What the sink's agent does: hold the batch and retry until ClickHouse takes it."""
    for attempt in range(1, 100):
        try:
            return writer.write(table, COLUMNS[table], batch)
        except Unreachable:
            between_attempts(attempt)
    raise AssertionError("ClickHouse never came back")


def test_outages_lost_answers_and_redelivery_leave_exactly_the_truth(
    clickhouse: ClickHouse,
) -> None:
    client, db = clickhouse
    apply_migrations(client, db, retention_days=3650)
    for table in COLUMNS:
        # no background merge may hide a duplicate (ReplacingMergeTree would collapse it)
        client.command(f"SYSTEM STOP MERGES {db}.{table}")
    start = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp() * 1000)
    tables, _ = engine_rows(DaySimulator(3, start, 1200).generate())
    work = batches(tables)
    assert len(work) > 30
    failing = FailingClickHouse(client)
    writer = ClickHouseWriter(
        cast(Client, failing), db, retries=2, backoff_s=0.0, max_backoff_s=0.0
    )

    def recover_after(attempts: int) -> Callable[[int], None]:
        def between(attempt: int) -> None:
            if attempt >= attempts:
                failing.down = False

        return between

    written = 0
    for n, (table, batch) in enumerate(work):
        if n % 7 == 3:  # ClickHouse goes away before this batch, back after 3 failed rounds
            failing.down = True
        if n % 5 == 1:  # this batch lands, but its answer is lost
            failing.lose_ack = 1
        written += write_until_done(writer, table, batch, recover_after(3))
        if n == len(work) // 2:
            # the sink crashes here: Kafka redelivers everything since the last commit (here:
            # the last ten batches) to a new sink process, which knows nothing
            writer = ClickHouseWriter(
                cast(Client, failing), db, retries=2, backoff_s=0.0, max_backoff_s=0.0
            )
            for again_table, again in work[max(0, n - 9) : n + 1]:
                assert write_until_done(writer, again_table, again, recover_after(1)) == 0
    assert failing.refused > 10 and failing.acks_lost > 5  # the failures did happen

    # every row once: raw counts equal the truth, and no id appears twice
    for table, rows in tables.items():
        key = "event_id" if table == "touchpoints" else "output_id"
        count, distinct = client.query(
            f"SELECT count(), uniqExact({key}) FROM {db}.{table}"
        ).result_rows[0]
        assert (count, distinct) == (len(rows), len(rows)), table
    assert written >= sum(len(rows) for rows in tables.values())

    # the rollups, filled by materialized views on every insert, are exact too
    outputs = tables["journey_events"]
    name_at = OUTPUT_COLUMNS.index("name")
    type_at = OUTPUT_COLUMNS.index("type")
    flow = Counter(row[name_at] for row in outputs if row[type_at] == "journey")
    rolled = {
        name: journeys
        for name, journeys in client.query(
            f"SELECT name, sum(journeys) FROM {db}.journey_flow_1m GROUP BY name"
        ).result_rows
    }
    assert rolled == dict(flow)
    moments = tables["experience_moments"]
    negatives = sum(row[type_at] == "negative_moment" for row in moments)
    rolled_negatives = client.query(
        f"SELECT sum(moments) FROM {db}.experience_moments_1m WHERE type = 'negative_moment'"
    ).result_rows[0][0]
    assert rolled_negatives == negatives > 0
    touch_total = client.query(f"SELECT sum(touchpoints) FROM {db}.touchpoints_1m").result_rows
    assert touch_total[0][0] == len(tables["touchpoints"])
