"""One way to reach ClickHouse, embedded (chdb) or a server over HTTP, from a DSN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse cannot be reached or opened; the message says what to check."""


def _absolute_chdb(dsn: str) -> str:
    """``chdb:relative/dir`` made absolute, so that a change of directory cannot move it."""
    if dsn.startswith("chdb:///"):
        return dsn
    path = Path(dsn.removeprefix("chdb:")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{path}"


def connect(dsn: str, **settings: Any) -> Client:
    """A clickhouse-connect client for ``dsn``.

    In the embedded mode one process owns the chdb directory; a second process opening it
    fails, and the error says so.
    """
    try:
        if dsn.startswith("chdb:"):
            return clickhouse_connect.get_client(dsn=_absolute_chdb(dsn), settings=settings)
        return clickhouse_connect.get_client(dsn=dsn, settings=settings)
    except Exception as exc:
        hint = (
            "is another journeywatch process (sink or run) already using this chdb directory? "
            "Only one process may open it."
            if dsn.startswith("chdb:")
            else "check JW_CLICKHOUSE_DSN, the server, and the credentials."
        )
        raise ClickHouseUnavailable(
            f"cannot open ClickHouse at {redact_dsn(dsn)}: {exc}; {hint}"
        ) from exc


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
