"""Analysts' SQL, read-only and bounded: ``journeywatch sql`` and ``POST /api/v1/sql``.

Two guards, so that neither alone has to be perfect:

* ClickHouse itself: the query runs on a client of its own whose session has ``readonly=1``
  (no write, no DDL, no ``SET``, no ``SETTINGS`` clause that changes anything, no ``file()`` or
  ``url()``) and the limits (``max_result_rows`` with ``result_overflow_mode=throw``,
  ``max_execution_time``, ``max_query_size``, ``max_result_bytes``). ``readonly`` is set last:
  after it no setting of that session can change, the limits included. (``readonly=2`` would
  let a ``SETTINGS`` clause lift the limits.)
* the text, before it is sent (``statement_of``): one statement, of a reading kind (SELECT,
  WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS), no FORMAT clause, no longer than the limit. The
  embedded engine (chdb) runs several statements sent as one text, so "one statement" is
  checked here; the refusal says why instead of ClickHouse's ``READONLY`` code.

Every failure is a ``SqlError`` with an HTTP status, a short reason and a message that says
what to do; ClickHouse's own message is kept (a syntax error shows where it failed).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError

from sinks.clickhouse.client import connect

READING_KINDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
# statements that change data, schema, settings or the server: refused before ClickHouse sees
# them (anything else that is not a reading kind goes to ClickHouse, whose readonly setting
# refuses it or whose parser says what is wrong)
CHANGING_KINDS = frozenset(
    [
        "INSERT",
        "CREATE",
        "DROP",
        "ALTER",
        "DELETE",
        "UPDATE",
        "TRUNCATE",
        "RENAME",
        "ATTACH",
        "DETACH",
        "OPTIMIZE",
        "SET",
        "SYSTEM",
        "KILL",
        "GRANT",
        "REVOKE",
        "USE",
        "EXCHANGE",
        "UNDROP",
        "BACKUP",
        "RESTORE",
        "MOVE",
        "REPLACE",
        "UPSERT",
        "CHECK",
    ]
)
_ALLOWED = "SELECT (or WITH … SELECT), SHOW, DESCRIBE, EXPLAIN and EXISTS"

# ClickHouse error codes with an answer of their own
_SYNTAX_ERROR = 62
_TIMEOUT_EXCEEDED = 159
_TOO_SLOW = 160
_READONLY = 164
_QUERY_IS_TOO_LARGE = 369
_TOO_MANY_ROWS_OR_BYTES = 396


@dataclass(frozen=True)
class SqlLimits:
    """What an analyst's query may cost (settings ``sql_*``)."""

    max_rows: int = 100_000
    timeout_s: float = 30.0
    max_query_bytes: int = 65_536
    max_result_bytes: int = 256 * 1024 * 1024

    @classmethod
    def of(cls, settings: Any) -> SqlLimits:
        return cls(
            max_rows=settings.sql_max_rows,
            timeout_s=settings.sql_timeout_s,
            max_query_bytes=settings.sql_max_query_bytes,
            max_result_bytes=settings.sql_max_result_bytes,
        )


class SqlError(Exception):
    """A query refused or failed: ``status`` (HTTP), ``reason`` (a short word for scripts) and
    the message for the analyst."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "reason": self.reason}


def read_only_settings(limits: SqlLimits) -> dict[str, Any]:
    """The session settings of the analysts' client, ``readonly`` last (after it, nothing in
    the session can change)."""
    return {
        "max_result_rows": limits.max_rows,
        "result_overflow_mode": "throw",
        "max_result_bytes": limits.max_result_bytes,
        "max_execution_time": limits.timeout_s,
        "timeout_overflow_mode": "throw",
        "max_query_size": limits.max_query_bytes,
        "readonly": 1,
    }


def read_only_client(dsn: str, database: str, limits: SqlLimits) -> Client:
    """A client of its own for analysts' queries: its session is read-only and bounded (the
    writer's client in the same process is not). Unqualified table names are ``database``'s.
    Raises ``ClickHouseUnavailable`` (sinks.clickhouse.client) when ClickHouse cannot be
    opened."""
    client = connect(dsn, **read_only_settings(limits))
    client.database = database
    return client


# --- the text ------------------------------------------------------------------------------
def _code_of(text: str) -> tuple[str, list[int]]:
    """``text`` with string literals, quoted identifiers and comments blanked out (same
    length), and the positions of the semicolons outside them."""
    out = list(text)
    semicolons: list[int] = []
    i, n = 0, len(text)

    def blank(start: int, end: int) -> None:
        for k in range(start, min(end, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        ch = text[i]
        if ch in "'\"`":
            j = i + 1
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == ch:
                    if j + 1 < n and text[j + 1] == ch:  # a doubled quote inside
                        j += 2
                        continue
                    break
                j += 1
            blank(i, j + 1)
            i = j + 1
        elif text.startswith("--", i) or ch == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2  # ClickHouse's block comments nest
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        else:
            if ch == ";":
                semicolons.append(i)
            i += 1
    return "".join(out), semicolons


def statement_of(text: str, limits: SqlLimits) -> str:
    """The one reading statement in ``text`` (a trailing semicolon dropped), or ``SqlError``:
    empty, too long, several statements, not a reading kind, or with a FORMAT clause."""
    size = len(text.encode())
    if size > limits.max_query_bytes:
        raise SqlError(
            400,
            "too_long",
            f"the query has {size:,} bytes; at most {limits.max_query_bytes:,} "
            "(JW_SQL_MAX_QUERY_BYTES)",
        )
    code, semicolons = _code_of(text)
    if semicolons:
        last = semicolons[-1]
        if len(semicolons) > 1 or code[last + 1 :].strip():
            raise SqlError(
                400,
                "several_statements",
                "one statement at a time: the text has more than one (separated by ';')",
            )
        text, code = text[:last], code[:last]
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code)
    if not words:
        raise SqlError(400, "empty", "no query: send one SELECT statement")
    kind = words[0].upper()
    if kind in CHANGING_KINDS:
        raise SqlError(
            403,
            "read_only",
            f"read-only: {kind} is refused; only {_ALLOWED} run here, with ClickHouse's "
            "readonly setting (nothing can be written, altered, dropped or set)",
        )
    if re.search(r"\bFORMAT\s+[A-Za-z_][A-Za-z0-9_]*\s*$", code, re.I):
        raise SqlError(
            400,
            "format",
            "leave out the FORMAT clause: the answer is JSON (the API) or what "
            "`journeywatch sql --format table|csv|json` asks for",
        )
    return text


# --- running -----------------------------------------------------------------------------
def json_value(value: Any) -> Any:
    """A ClickHouse value as JSON can carry it: times in ISO 8601 (UTC, as ClickHouse holds
    them), decimals, UUIDs, addresses and integers wider than 64 bits (UInt128, Int256: JSON
    numbers past 64 bits are refused by the encoder and lose digits in most readers) as text,
    bytes as UTF-8, containers element-wise."""
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(json_value(k)): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    return str(value)


def _failure(exc: Exception, limits: SqlLimits) -> SqlError:
    """The analyst's answer to a ClickHouse error: its message, and what to do."""
    message = re.sub(r"Code: \d+\. DB::Exception: ", "", str(exc).strip())
    message = re.sub(r"\s*\(version [0-9.]+[^)]*\)", "", message)
    message = message.replace("\n FORMAT Native", "")  # the driver's own suffix to the query
    message = re.sub(r"(\([A-Z_]+\))\. \1", r"\1", message)  # "(READONLY). (READONLY)"
    code = getattr(exc, "code", None)
    if code == _READONLY:
        return SqlError(
            403,
            "read_only",
            "read-only: queries run with ClickHouse's readonly=1, so nothing can be written, "
            f"and neither SET nor a SETTINGS clause may change a setting. ClickHouse: {message}",
        )
    if code == _TOO_MANY_ROWS_OR_BYTES:
        return SqlError(
            400,
            "too_many_rows",
            f"the result is larger than the limit of {limits.max_rows:,} rows "
            f"(JW_SQL_MAX_ROWS) or {limits.max_result_bytes:,} bytes (JW_SQL_MAX_RESULT_BYTES): "
            f"add a LIMIT, or aggregate. ClickHouse: {message}",
        )
    if code in (_TIMEOUT_EXCEEDED, _TOO_SLOW):
        return SqlError(
            400,
            "timeout",
            f"the query ran into the time limit of {limits.timeout_s:g} s (JW_SQL_TIMEOUT_S): "
            f"narrow it (a shorter time range, a rollup table). ClickHouse: {message}",
        )
    if code == _QUERY_IS_TOO_LARGE:
        return SqlError(400, "too_long", f"the query is too long. ClickHouse: {message}")
    if code == _SYNTAX_ERROR:
        return SqlError(400, "syntax", message)
    if isinstance(exc, DatabaseError) and code:
        return SqlError(400, "clickhouse", message)
    return SqlError(503, "unavailable", f"ClickHouse did not answer: {message}")


def run_sql(client: Client, text: str, limits: SqlLimits) -> dict[str, Any]:
    """Run one analyst's query on a ``read_only_client``: ``{"columns": [{"name", "type"}],
    "rows": [[...]], "row_count", "elapsed_s"}``, or ``SqlError``."""
    statement = statement_of(text, limits)
    started = time.monotonic()
    try:
        result = client.query(statement)
    except ClickHouseError as exc:
        raise _failure(exc, limits) from exc
    rows = [[json_value(v) for v in row] for row in result.result_rows]
    return {
        "columns": [
            {"name": name, "type": kind.name}
            for name, kind in zip(result.column_names, result.column_types, strict=True)
        ],
        "rows": rows,
        "row_count": len(rows),
        "elapsed_s": round(time.monotonic() - started, 3),
    }
