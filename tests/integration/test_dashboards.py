"""Every ClickHouse query of every Grafana dashboard, run on the real schema filled from three
simulated hours through the journey engine: each one runs and returns data."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.grafana import clickhouse_queries, expand_sql
from tests.helpers import ClickHouse
from tests.integration.test_live_figures import DAY, fill
from tests.live_figures import morning

pytestmark = pytest.mark.integration

# what Grafana's variables hold when on-call opens the page an alert links to, and "All"
SEGMENT = {"journey": "online_purchase", "stage": "payment", "channel": "web"}
ALL = {"journey": "online_purchase", "stage": ".*", "channel": ".*"}


def answered_complaint(start: int) -> list[dict[str, Any]]:
    """A complaint by e-mail at 10:00 that an agent resolves on the phone at 10:40: the morning
    may hold none (the complaint-response panel must have one to show)."""

    def at(minutes: int) -> str:
        return datetime.fromtimestamp(start / 1000 + 10 * 3600 + minutes * 60, UTC).isoformat()

    who = {"customer_id": "dashboards-complainer"}
    return [
        {"event_id": "complaint-1", "occurred_at": at(0), "channel": "email",
         "touchpoint": "support.contact", "action": "complain", **who},
        {"event_id": "answer-1", "occurred_at": at(40), "channel": "call_center",
         "touchpoint": "agent.talk", "action": "resolve", "session_hint": "call-d1", **who},
    ]  # fmt: skip


def test_every_clickhouse_panel_returns_data(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    start = int(DAY.timestamp() * 1000)
    events = morning(start) + answered_complaint(start)
    events.sort(key=lambda e: e["occurred_at"])
    fill(client, db, events)
    queries = clickhouse_queries()
    assert len(queries) > 20
    empty = []
    for values in (SEGMENT, ALL):
        for uid, title, raw in queries:
            sql = expand_sql(
                raw, values, DAY + timedelta(hours=8), DAY + timedelta(hours=13)
            ).replace("journeywatch.", f"{db}.")
            assert not re.search(r"\$\w|\$\{", sql), (uid, title, sql)
            try:
                rows = client.query(sql).result_rows
            except Exception as exc:  # name the panel: the ClickHouse message alone does not
                raise AssertionError(f"{uid} / {title} ({values}): {exc}\n{sql}") from exc
            values_found = [v for row in rows for v in row if v is not None and v != ""]
            if not values_found:
                empty.append((uid, title, values["channel"]))
    assert empty == [], empty
