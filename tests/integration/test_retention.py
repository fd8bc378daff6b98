"""Every ClickHouse table keeps its rows for the time the settings say (docs/operations/
retention.md), in a real embedded ClickHouse (chdb): after the migrations, after a change of
the settings, and the TTL deletes what is older."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.settings import Settings
from sinks.clickhouse.migrations import apply_migrations
from sinks.clickhouse.retention import (
    TABLE_RETENTION,
    WITHOUT_RETENTION,
    apply_retention,
    current_ttls,
    retention_statements,
    ttl_expression,
)
from tests.helpers import ClickHouse

pytestmark = pytest.mark.integration


def _settings(**days: int) -> Settings:
    return Settings.model_validate(days)


def test_the_kinds_of_data_default_to_the_touchpoints_retention() -> None:
    assert _settings(touchpoint_retention_days=30).retention_days() == {
        "touchpoints": 30,
        "journeys": 30,
        "dead_letters": 30,
        "rollups": 30,
    }
    assert _settings(
        journey_retention_days=60, dead_letter_retention_days=7, rollup_retention_days=800
    ).retention_days() == {"touchpoints": 395, "journeys": 60, "dead_letters": 7, "rollups": 800}


def test_every_table_has_the_ttl_its_setting_says(clickhouse: ClickHouse) -> None:
    """Every MergeTree table the migrations create is either in TABLE_RETENTION (and has that
    TTL) or in WITHOUT_RETENTION with the reason: a new table without a TTL fails here."""
    client, db = clickhouse
    days = _settings(
        touchpoint_retention_days=30,
        journey_retention_days=60,
        dead_letter_retention_days=7,
        rollup_retention_days=800,
    ).retention_days()
    apply_migrations(client, db, 30, retention=days)
    rows = client.query(
        "SELECT name, engine_full, create_table_query FROM system.tables "
        "WHERE database = {db:String} AND engine LIKE '%MergeTree'",
        parameters={"db": db},
    ).result_rows
    tables = {str(name): (str(engine), str(create)) for name, engine, create in rows}
    assert set(tables) == set(TABLE_RETENTION) | set(WITHOUT_RETENTION)
    for table, (engine, create) in tables.items():
        if table in WITHOUT_RETENTION:
            assert " TTL " not in engine, table
            continue
        expected = f"TTL {ttl_expression(table, days)}"
        assert expected in engine and expected in create, (table, engine)
    kinds = {table: retention.kind for table, retention in TABLE_RETENTION.items()}
    assert "toIntervalDay(30)" in tables["touchpoints"][0]
    for table in ("journey_events", "experience_moments", "journey_state_agg"):
        assert kinds[table] == "journeys" and "toIntervalDay(60)" in tables[table][0]
    for table in ("failed_events", "journey_errors", "action_failures"):
        assert kinds[table] == "dead_letters" and "toIntervalDay(7)" in tables[table][0]
    for table in ("journey_rollup_1m", "moment_rollup_1m", "touchpoint_rollup_1m", "kpi_rollup_1h"):
        assert kinds[table] == "rollups" and "toIntervalDay(800)" in tables[table][0]


def test_a_changed_setting_changes_the_ttl_at_the_next_start_and_only_then(
    clickhouse: ClickHouse,
) -> None:
    """The TTL a migration wrote is not fixed: the next start of the sink (or `journeywatch
    migrate`) alters the tables whose setting changed, and none when nothing did."""
    client, db = clickhouse
    first = _settings(touchpoint_retention_days=395).retention_days()
    apply_migrations(client, db, 395, retention=first)
    assert apply_retention(client, db, first) == []
    shorter = _settings(touchpoint_retention_days=395, dead_letter_retention_days=14)
    assert sorted(apply_retention(client, db, shorter.retention_days())) == [
        "action_failures",
        "failed_events",
        "journey_errors",
    ]
    ttls = current_ttls(client, db)
    assert ttls["failed_events"] == "toDateTime(failed_at) + toIntervalDay(14)"
    assert ttls["touchpoints"] == "toDateTime(occurred_at) + toIntervalDay(395)"
    assert apply_migrations(client, db, 395, retention=shorter.retention_days()) == []
    assert apply_retention(client, db, shorter.retention_days()) == []


def test_rows_older_than_the_retention_are_deleted(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    days = _settings(dead_letter_retention_days=7).retention_days()
    apply_migrations(client, db, 395, retention=days)
    now = datetime.now(UTC)
    columns = ["failed_at", "reason", "raw"]
    client.insert(
        f"{db}.failed_events",
        [
            [now - timedelta(days=8), "not_json", "old"],
            [now - timedelta(days=6), "not_json", "new"],
        ],
        column_names=columns,
    )
    client.command(f"OPTIMIZE TABLE {db}.failed_events FINAL")
    rows = client.query(f"SELECT raw FROM {db}.failed_events").result_rows
    assert rows == [("new",)]


def test_on_a_cluster_the_local_tables_are_altered_on_every_node() -> None:
    days = {"touchpoints": 30, "journeys": 30, "dead_letters": 30, "rollups": 90}
    current = {table: ttl_expression(table, days) for table in TABLE_RETENTION}
    current["kpi_rollup_1h"] = "hour + toIntervalDay(30)"
    assert retention_statements(current, "jw", days, "c1") == [
        "ALTER TABLE jw.kpi_rollup_1h_local ON CLUSTER 'c1' MODIFY TTL hour + toIntervalDay(90)"
    ]
    assert retention_statements({}, "jw", days) == []  # tables not created yet: left alone


def test_the_journeys_view_keeps_scores_and_retirements_under_the_time_to_live(
    clickhouse: ClickHouse,
) -> None:
    """journey_state_agg's rows from the score and retired views carry their own time
    (migration 0010): merged under the TTL, the journeys view still has each journey's score
    and shows a retired journey retired (with last_at = 1970 they expired at the first merge)."""
    client, db = clickhouse
    apply_migrations(
        client, db, 395, retention=_settings(journey_retention_days=30).retention_days()
    )
    at = datetime.now(UTC) - timedelta(days=2)
    columns = ["output_id", "type", "name", "at", "person_id", "journey", "journey_id", "detail"]
    events = [
        ["o1", "journey", "started", at, "c:1", "online_purchase", "j1", "{}"],
        [
            "o2",
            "journey",
            "converted",
            at + timedelta(hours=1),
            "c:1",
            "online_purchase",
            "j1",
            "{}",
        ],
        ["o3", "journey", "started", at, "c:2", "app_onboarding", "j2", "{}"],
        [
            "o4",
            "journey",
            "retired",
            at,
            "c:2",
            "app_onboarding",
            "j2",
            '{"reason": "journey_removed"}',
        ],
    ]
    client.insert(f"{db}.journey_events", events, column_names=columns)
    score = [
        "o5",
        "score",
        "peak_end",
        at + timedelta(hours=1),
        "c:1",
        "online_purchase",
        "j1",
        '{"outcome": "converted"}',
    ]
    client.insert(f"{db}.experience_moments", [[*score, 0.75]], column_names=[*columns, "value"])
    client.command(f"OPTIMIZE TABLE {db}.journey_state_agg FINAL")
    rows = client.query(
        f"SELECT journey_id, outcome, score FROM {db}.journeys ORDER BY journey_id"
    ).result_rows
    assert rows == [("j1", "converted", 0.75), ("j2", "retired", None)]
