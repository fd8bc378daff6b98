"""The text guard of analysts' SQL (sinks/clickhouse/sql.py) and `journeywatch sql`'s output
and messages that need no ClickHouse. ClickHouse's own readonly guard and the limits are tested
against real chdb (tests/integration/test_sql.py) and a real sink (tests/e2e/test_sql.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sinks.clickhouse.sql import SqlError, SqlLimits, json_value, statement_of
from streams.cli import _sql_output, main
from tests.helpers import free_port

LIMITS = SqlLimits(max_query_bytes=2048)


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("SELECT 1", "SELECT 1"),
        ("select 1;", "select 1"),
        ("SELECT 1 ;  -- done\n", "SELECT 1 "),
        ("-- query: a name\nSELECT ';' AS s", "-- query: a name\nSELECT ';' AS s"),
        ("SELECT 'it''s; fine', `a;b`, \"c;d\" FROM t", None),
        ("/* a /* nested; */ comment */ WITH 1 AS x SELECT x", None),
        ("  (SELECT 1)", None),
        ("SHOW TABLES", None),
        ("DESCRIBE TABLE journeywatch.touchpoints", None),
        ("EXPLAIN SELECT 1", None),
        ("SELECT format('{}', 1)", None),
        ("SELEC 1", None),  # ClickHouse's parser says what is wrong
    ],
)
def test_one_reading_statement_goes_through(text: str, sent: str | None) -> None:
    assert statement_of(text, LIMITS) == (text if sent is None else sent)


@pytest.mark.parametrize(
    ("text", "status", "reason", "says"),
    [
        ("INSERT INTO t VALUES (1)", 403, "read_only", "INSERT is refused"),
        ("/* hi */ drop table t", 403, "read_only", "DROP is refused"),
        ("ALTER TABLE t DELETE WHERE 1", 403, "read_only", "ALTER is refused"),
        ("SET readonly = 0", 403, "read_only", "SET is refused"),
        ("TRUNCATE TABLE t", 403, "read_only", "TRUNCATE is refused"),
        ("SELECT 1; DROP TABLE t", 400, "several_statements", "one statement at a time"),
        ("SELECT 1; SELECT 2;", 400, "several_statements", "one statement at a time"),
        ("SELECT 1 FORMAT JSON", 400, "format", "leave out the FORMAT clause"),
        ("", 400, "empty", "no query"),
        ("-- nothing\n", 400, "empty", "no query"),
        ("SELECT '" + "x" * 3000 + "'", 400, "too_long", "JW_SQL_MAX_QUERY_BYTES"),
    ],
)
def test_what_is_refused_before_clickhouse_and_why(
    text: str, status: int, reason: str, says: str
) -> None:
    with pytest.raises(SqlError) as refused:
        statement_of(text, LIMITS)
    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert says in refused.value.message


def test_values_become_json() -> None:
    import datetime as dt
    import uuid
    from decimal import Decimal
    from ipaddress import IPv4Address

    row = [
        dt.datetime(2026, 12, 7, 6, 0, 1),
        dt.date(2026, 12, 7),
        Decimal("1.50"),
        uuid.UUID(int=1),
        IPv4Address("10.0.0.1"),
        b"bytes",
        (1, "a"),
        {"k": [dt.date(2026, 1, 1)]},
        None,
    ]
    assert json.loads(json.dumps([json_value(v) for v in row])) == [
        "2026-12-07T06:00:01",
        "2026-12-07",
        "1.50",
        "00000000-0000-0000-0000-000000000001",
        "10.0.0.1",
        "bytes",
        [1, "a"],
        {"k": ["2026-01-01"]},
        None,
    ]


ANSWER = {
    "columns": [{"name": "journey", "type": "String"}, {"name": "n", "type": "UInt64"}],
    "rows": [["online_purchase", 12], ["support, case", None], ["x", 3]],
    "row_count": 3,
    "elapsed_s": 0.01,
}


def test_output_as_table_csv_and_json() -> None:
    assert _sql_output(ANSWER, "table").splitlines() == [
        "journey             n",
        "---------------  ----",
        "online_purchase    12",
        "support, case    NULL",
        "x                   3",
    ]
    assert _sql_output(ANSWER, "csv") == 'journey,n\nonline_purchase,12\n"support, case",\nx,3\n'
    assert json.loads(_sql_output(ANSWER, "json")) == ANSWER


def test_an_unreachable_sink_is_named_with_how_to_start_it(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("JW_STATUS_PORT", str(port))
    monkeypatch.setenv("JW_WEB_READ_TOKEN", "r" * 20)
    result = CliRunner().invoke(main, ["sql", "SELECT 1"])
    assert result.exit_code == 1
    assert f"cannot reach journeywatch at http://127.0.0.1:{port}" in result.output
    assert "`make run`" in result.output and "--api" in result.output
    both = CliRunner().invoke(main, ["sql", "--direct", "--api", "http://x", "SELECT 1"])
    assert both.exit_code == 2 and "not both" in both.output
