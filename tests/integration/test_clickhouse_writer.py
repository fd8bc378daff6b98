"""The migrations and the idempotent writer against a real (embedded) ClickHouse."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.contract import Rejection, TouchpointEvent, decode_touchpoint
from pipeline.deadletter import dead_letter_headers
from pipeline.simulator import SimpleTrafficSource
from sinks.clickhouse.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    bookkeeping_statements,
    load_migrations,
)
from sinks.clickhouse.rows import (
    FAILED_EVENT_COLUMNS,
    TOUCHPOINT_COLUMNS,
    failed_event_row,
    touchpoint_row,
)
from sinks.clickhouse.writer import ClickHouseWriter, PartitionBatch
from tests.helpers import ClickHouse

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def touchpoint_batch(
    partition: int, first_offset: int, count: int, topic_id: str = "id-1"
) -> PartitionBatch:
    source = SimpleTrafficSource(seed=partition)
    rows: list[list[Any]] = []
    for i, data in enumerate(source.events(NOW, count)):
        event = decode_touchpoint(orjson.dumps(data), NOW)
        assert isinstance(event, TouchpointEvent)
        rows.append(
            touchpoint_row(
                orjson.loads(event.to_json()),
                "touchpoints.by_person",
                topic_id,
                partition,
                first_offset + i,
            )
        )
    return PartitionBatch(
        "touchpoints.by_person",
        topic_id,
        partition,
        list(range(first_offset, first_offset + count)),
        rows,
    )


def test_migrations_apply_once_and_are_recorded(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    applied = apply_migrations(client, db, retention_days=30)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert apply_migrations(client, db, retention_days=30) == []
    tables = {row[0] for row in client.query(f"SHOW TABLES FROM {db}").result_rows}
    assert {"touchpoints", "failed_events", "schema_migrations"} <= tables
    client.command(
        f"ALTER TABLE {db}.schema_migrations UPDATE checksum = 'edited' WHERE version = 1"
    )
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(client, db, retention_days=30)


def test_a_redelivered_batch_is_not_written_twice(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    apply_migrations(client, db, retention_days=30)
    writer = ClickHouseWriter(client, db)
    assert writer.write("touchpoints", TOUCHPOINT_COLUMNS, touchpoint_batch(0, 0, 500)) == 500
    # After a crash the offsets were not committed: the same records come again, in a batch
    # that also holds new ones, and a fresh writer (new process) must skip exactly the old.
    restarted = ClickHouseWriter(client, db)
    overlapping = touchpoint_batch(0, 0, 800)
    assert restarted.write("touchpoints", TOUCHPOINT_COLUMNS, overlapping) == 300
    assert restarted.write("touchpoints", TOUCHPOINT_COLUMNS, overlapping) == 0
    # Another partition is independent, and so is a re-created topic (new id, offsets from 0).
    assert restarted.write("touchpoints", TOUCHPOINT_COLUMNS, touchpoint_batch(1, 0, 100)) == 100
    assert (
        restarted.write("touchpoints", TOUCHPOINT_COLUMNS, touchpoint_batch(0, 0, 50, "id-2")) == 50
    )
    rows = client.query(
        "SELECT kafka_topic_id, kafka_partition, count(), uniqExact(kafka_offset) "
        f"FROM {db}.touchpoints "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).result_rows
    assert rows == [("id-1", 0, 800, 800), ("id-1", 1, 100, 100), ("id-2", 0, 50, 50)]


def test_a_retried_insert_with_the_same_token_is_dropped_by_clickhouse(
    clickhouse: ClickHouse,
) -> None:
    client, db = clickhouse
    apply_migrations(client, db, retention_days=30)
    batch = touchpoint_batch(3, 10, 20)
    # Two writers that both believe nothing is stored (the first insert landed but its
    # acknowledgement was lost): ClickHouse drops the second by its deduplication token.
    ClickHouseWriter(client, db).write("touchpoints", TOUCHPOINT_COLUMNS, batch)
    blind = ClickHouseWriter(client, db)
    blind._high_water[("touchpoints", batch.topic, batch.topic_id, batch.partition)] = -1
    blind.write("touchpoints", TOUCHPOINT_COLUMNS, batch)
    assert client.query(f"SELECT count() FROM {db}.touchpoints").result_rows[0][0] == 20


def test_failed_events_keep_reason_source_and_redacted_bytes(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    apply_migrations(client, db, retention_days=30)
    rejection = decode_touchpoint(b'{"event_id": "x", "channel": "web", "source": "sdk"}', NOW)
    assert isinstance(rejection, Rejection)
    headers = dead_letter_headers(rejection, "touchpoints.raw", 2, 41, NOW)
    row = failed_event_row(headers, b'{"event_id": "x"}', "touchpoints.dlq", "dlq-id", 0, 7)
    ClickHouseWriter(client, db).write(
        "failed_events",
        FAILED_EVENT_COLUMNS,
        PartitionBatch("touchpoints.dlq", "dlq-id", 0, [7], [row]),
    )
    stored = client.query(
        "SELECT reason, field, channel, source, original_topic, original_partition, "
        "original_offset, raw "
        f"FROM {db}.failed_events"
    ).result_rows
    assert stored == [
        (
            "missing_field",
            "occurred_at",
            "web",
            "sdk",
            "touchpoints.raw",
            2,
            41,
            '{"event_id": "x"}',
        )
    ]


def test_the_cluster_variant_is_valid_clickhouse_sql(clickhouse: ClickHouse) -> None:
    client, _ = clickhouse
    statements = bookkeeping_statements("journeywatch", "jw_cluster")
    for migration in load_migrations():
        statements += migration.statements("jw_cluster", db="journeywatch", retention_days=30)
    for statement in statements:  # the server's own parser, without running anything
        formatted = client.query(
            "SELECT formatQuery({q:String})", parameters={"q": statement}
        ).result_rows[0][0]
        if not statement.startswith("INSERT"):  # a backfill runs once, through Distributed
            assert "ON CLUSTER jw_cluster" in formatted, formatted
    text = "\n".join(statements)
    assert "journeywatch.touchpoints_local ON CLUSTER 'jw_cluster'" in text
    assert (
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/journeywatch/touchpoints_local', '{replica}', ingested_at)"
        in text
    )
    assert (
        "ENGINE = Distributed('jw_cluster', 'journeywatch', 'touchpoints_local', "
        "cityHash64(event_id))" in text
    )
    assert "Distributed('jw_cluster', 'journeywatch', 'failed_events_local', rand())" in text
    # a rollup's materialized view is fired by the shard's local table and writes its local
    # rollup; a plain view reads the Distributed tables
    assert (
        "journeywatch.journey_rollup_1m_mv ON CLUSTER 'jw_cluster' "
        "TO journeywatch.journey_rollup_1m_local" in text
    )
    assert "FROM journeywatch.journey_events_local" in text
    assert "FROM journeywatch.journey_rollup_1m\n" in text
    # a later migration alters a table: its local tables and the Distributed table over them
    assert (
        "ALTER TABLE journeywatch.journey_state_agg_local ON CLUSTER 'jw_cluster' ADD COLUMN"
        in text
    )
    assert "ALTER TABLE journeywatch.journey_state_agg ON CLUSTER 'jw_cluster' ADD COLUMN" in text
    assert "CREATE OR REPLACE VIEW journeywatch.journeys ON CLUSTER 'jw_cluster' AS" in text
    # Without a cluster nothing changes.
    plain = [
        s for m in load_migrations() for s in m.statements(db="journeywatch", retention_days=30)
    ]
    assert not any("ON CLUSTER" in s or "_local" in s for s in plain)


def test_a_semicolon_in_a_comment_ends_no_statement() -> None:
    migration = Migration(
        99,
        "comments",
        "-- first: a table; then a view\n-- shard_by: cityHash64(id)\n"
        "CREATE TABLE IF NOT EXISTS {db}.t (id String) ENGINE = MergeTree ORDER BY id;\n"
        "-- the view; reads t\nCREATE OR REPLACE VIEW {db}.v AS SELECT id FROM {db}.t; ;",
    )
    assert migration.statements(db="d") == [
        "CREATE TABLE IF NOT EXISTS d.t (id String) ENGINE = MergeTree ORDER BY id",
        "CREATE OR REPLACE VIEW d.v AS SELECT id FROM d.t",
    ]
    clustered = migration.statements("c", db="d")
    assert "cityHash64(id)" in clustered[1] and len(clustered) == 3
