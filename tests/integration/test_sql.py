"""Analysts' SQL on a real ClickHouse (chdb): the read-only client refuses every write, DDL and
settings change by itself (ClickHouse's readonly=1, the text guard bypassed), the table is
unchanged afterwards, the writer of the same process still writes, and the row and time limits
stop a query over numbers(1e10) with their error instead of a hang. `journeywatch sql
--direct` runs the same on a chdb directory no sink holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.clickhouse.sql import SqlError, SqlLimits, read_only_client, run_sql
from tests.helpers import ClickHouse, jw_env, run_cli

pytestmark = pytest.mark.integration

LIMITS = SqlLimits(max_rows=1000, timeout_s=1.0)
WRITES = [
    "INSERT INTO facts VALUES (1)",
    "INSERT INTO facts SELECT number FROM numbers(10)",
    "DROP TABLE facts",
    "ALTER TABLE facts DELETE WHERE 1",
    "ALTER TABLE facts ADD COLUMN b UInt8",
    "TRUNCATE TABLE facts",
    "CREATE TABLE other (a UInt8) ENGINE = Memory",
    "SET readonly = 0",
    "SET max_result_rows = 0",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT count() FROM facts SETTINGS max_result_rows = 0, max_execution_time = 0",
    "SELECT 1; DROP TABLE facts",
    "SELECT * FROM file('/etc/passwd', LineAsString)",
    "WITH 1 AS x INSERT INTO facts SELECT x",
]


def test_writes_ddl_and_settings_are_refused_and_the_table_is_unchanged(
    clickhouse: ClickHouse, chdb_dir: Path
) -> None:
    writer, database = clickhouse
    writer.command(f"CREATE DATABASE {database}")
    writer.command(f"CREATE TABLE {database}.facts (a UInt64) ENGINE = MergeTree ORDER BY a")
    writer.command(f"INSERT INTO {database}.facts SELECT number FROM numbers(5000)")
    reader = read_only_client(f"chdb://{chdb_dir}", database, LIMITS)
    before = writer.query(f"SHOW CREATE TABLE {database}.facts").result_rows
    for sql in WRITES:
        with pytest.raises(SqlError) as refused:
            run_sql(reader, sql, LIMITS)
        assert refused.value.status in (400, 403), sql
        if refused.value.status == 403:
            assert refused.value.message.startswith("read-only: "), sql
        # ClickHouse refuses it by itself, without the text guard
        if not sql.startswith("SELECT 1;"):
            with pytest.raises(DatabaseError, match=r"READONLY|SYNTAX_ERROR|readonly mode"):
                reader.query(sql)
    assert writer.query(f"SELECT count(), sum(a) FROM {database}.facts").result_rows == [
        (5000, sum(range(5000)))
    ]
    assert writer.query(f"SHOW CREATE TABLE {database}.facts").result_rows == before
    assert writer.query(f"EXISTS TABLE {database}.other").result_rows == [(0,)]
    # the session's readonly is the reader's alone: the sink's writer still writes
    writer.command(f"INSERT INTO {database}.facts VALUES (99999)")
    answer = run_sql(reader, "SELECT count() AS n FROM facts", LIMITS)
    assert answer["columns"] == [{"name": "n", "type": "UInt64"}]
    assert answer["rows"] == [[5001]]


def test_the_row_and_time_limits_stop_a_query_over_ten_billion_rows(
    clickhouse: ClickHouse, chdb_dir: Path
) -> None:
    reader = read_only_client(f"chdb://{chdb_dir}", "default", LIMITS)
    started = time.monotonic()
    with pytest.raises(SqlError) as too_many:
        run_sql(reader, "SELECT number FROM numbers(1e10)", LIMITS)
    assert (too_many.value.status, too_many.value.reason) == (400, "too_many_rows")
    assert "limit of 1,000 rows (JW_SQL_MAX_ROWS)" in too_many.value.message
    assert "add a LIMIT" in too_many.value.message
    with pytest.raises(SqlError) as slow:
        run_sql(reader, "SELECT sum(sipHash64(number)) FROM numbers(1e10)", LIMITS)
    assert (slow.value.status, slow.value.reason) == (400, "timeout")
    assert "time limit of 1 s (JW_SQL_TIMEOUT_S)" in slow.value.message
    assert "TIMEOUT_EXCEEDED" in slow.value.message
    assert time.monotonic() - started < 10
    # at the limit is fine; a LIMIT is the way round it
    assert run_sql(reader, "SELECT number FROM numbers(1e10) LIMIT 1000", LIMITS)["row_count"] == (
        1000
    )
    with pytest.raises(SqlError) as syntax:
        run_sql(reader, "SELECT count( FROM numbers(3)", LIMITS)
    assert syntax.value.reason == "syntax" and "Syntax error" in syntax.value.message


def test_journeywatch_sql_direct_on_a_chdb_directory(tmp_path: Path) -> None:
    env = jw_env(clickhouse_dsn=f"chdb://{tmp_path / 'ch'}", data_dir=tmp_path / "var")
    assert run_cli(["migrate"], env).returncode == 0
    shown = run_cli(["sql", "--direct", "--format", "csv", "SHOW TABLES"], env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("name\n") and "touchpoints\n" in shown.stdout
    answer = run_cli(
        ["sql", "--direct", "--format", "json", "SELECT count() FROM touchpoints"], env
    )
    assert json.loads(answer.stdout)["rows"] == [[0]]
    refused = run_cli(["sql", "--direct", "DROP TABLE journeywatch.touchpoints"], env)
    assert refused.returncode == 1 and "read-only: DROP is refused" in refused.stderr
