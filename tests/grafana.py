"""The shipped Grafana dashboards for tests: their queries, with Grafana's variables and the
ClickHouse data source's macros expanded as Grafana would, so that the real Prometheus and
ClickHouse can run them."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import datetime
from types import ModuleType
from typing import Any

from tests.helpers import REPO

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"

Query = tuple[str, str, str]  # dashboard uid, panel title, query text


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jw_dashboards", GRAFANA / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_dashboards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))]


def _queries(key: str) -> list[Query]:
    return [
        (board["uid"], panel["title"], target[key])
        for board in all_dashboards()
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if key in target
    ]


def prometheus_queries() -> list[Query]:
    return _queries("expr")


def clickhouse_queries() -> list[Query]:
    return _queries("rawSql")


def _variables(text: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            return match[0]  # a Grafana built-in, expanded by the caller
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, text)


def expand_promql(expr: str, values: dict[str, str], rate_interval: str) -> str:
    """A panel's PromQL as Grafana sends it (``$__rate_interval`` as given)."""
    return _variables(expr, values | {"__rate_interval": rate_interval})


def expand_sql(
    raw: str, values: dict[str, str], start: datetime, end: datetime, interval_s: int = 60
) -> str:
    """A panel's SQL as the ClickHouse data source sends it for the range start..end."""

    def at(moment: datetime) -> str:
        return f"toDateTime({int(moment.timestamp())})"

    text = re.sub(
        r"\$__timeFilter\(([\w.]+)\)",
        lambda m: f"{m[1]} >= {at(start)} AND {m[1]} <= {at(end)}",
        raw,
    )
    text = re.sub(
        r"\$__timeInterval\(([\w.]+)\)",
        lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {interval_s} second)",
        text,
    )
    text = text.replace("$__fromTime", at(start)).replace("$__toTime", at(end))
    return _variables(text, values)
