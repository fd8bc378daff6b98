"""Read queries behind the status page and the JSON API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client


def _counts(client: Client, sql: str) -> dict[str, int]:
    return {str(row[0]): int(row[1]) for row in client.query(sql).result_rows}


def pipeline_stats(client: Client, database: str) -> dict[str, Any]:
    """Row counts of the fact tables, touchpoints by channel, failed events by reason and the
    records the journey agent could not apply (``journey_errors``) by kind."""
    by_channel = _counts(
        client, f"SELECT channel, count() FROM {database}.touchpoints GROUP BY channel"
    )
    by_reason = _counts(
        client, f"SELECT reason, count() FROM {database}.failed_events GROUP BY reason"
    )
    journey_events = _counts(
        client,
        f"SELECT name, uniqExact(output_id) FROM {database}.journey_events "
        "WHERE type = 'journey' GROUP BY name",
    )
    journey_errors = _counts(
        client, f"SELECT kind, count() FROM {database}.journey_errors GROUP BY kind"
    )
    latest = client.query(f"SELECT max(occurred_at) FROM {database}.touchpoints").result_rows[0][0]
    return {
        "touchpoints": sum(by_channel.values()),
        "failed_events": sum(by_reason.values()),
        "touchpoints_by_channel": by_channel,
        "failed_events_by_reason": by_reason,
        "journey_events_by_name": journey_events,
        "journey_errors": sum(journey_errors.values()),
        "journey_errors_by_kind": journey_errors,
        "latest_occurred_at": latest.isoformat() + "Z" if by_channel else None,
    }


def stored_event_ids(client: Client, database: str, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` the touchpoints table holds (``journeywatch replay raw``)."""
    if not event_ids:
        return set()
    rows = client.query(
        f"SELECT DISTINCT event_id FROM {database}.touchpoints "
        "WHERE event_id IN {ids:Array(String)}",
        parameters={"ids": event_ids},
    ).result_rows
    return {str(row[0]) for row in rows}


def newest_minute(client: Client, database: str) -> datetime | None:
    """The newest minute that holds touchpoints (UTC), or None before the first one."""
    newest, rows = client.query(
        f"SELECT max(minute), count() FROM {database}.touchpoint_rollup_1m"
    ).result_rows[0]
    return newest.replace(tzinfo=UTC) if rows else None
