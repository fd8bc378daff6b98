"""How long each ClickHouse table keeps its rows: a TTL per table, from settings.

The migrations create the tables with the touchpoints' retention (``{retention_days}``); a
TTL written into a migration would then be fixed for ever. Instead, every start of the sink
(and ``journeywatch migrate``) compares each table's TTL with the settings
(``Settings.retention_days``: touchpoints, journeys, dead letters, rollups) and changes the
ones that differ with ``ALTER TABLE ... MODIFY TTL``. ClickHouse then applies the new TTL to
the parts already written in the background; a start with unchanged settings alters nothing.
The table of what is kept where is docs/operations/retention.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

from clickhouse_connect.driver.client import Client


class TableRetention(NamedTuple):
    kind: str  # the key of Settings.retention_days
    expires: str  # the row's time the retention counts from (a DateTime expression)


TABLE_RETENTION: Final[dict[str, TableRetention]] = {
    "touchpoints": TableRetention("touchpoints", "toDateTime(occurred_at)"),
    "journey_events": TableRetention("journeys", "toDateTime(at)"),
    "experience_moments": TableRetention("journeys", "toDateTime(at)"),
    # Each journey's state; a journey lives as long as its latest row (the rows of a journey
    # merge into one whose last_at is the latest).
    "journey_state_agg": TableRetention("journeys", "toDateTime(last_at)"),
    # The customer timeline's copies (migration 0012): as long as what they copy.
    "touchpoints_by_identifier": TableRetention("touchpoints", "toDateTime(occurred_at)"),
    "person_outputs": TableRetention("journeys", "toDateTime(at)"),
    "identity_links": TableRetention("journeys", "toDateTime(at)"),
    "failed_events": TableRetention("dead_letters", "toDateTime(failed_at)"),
    "journey_errors": TableRetention("dead_letters", "toDateTime(failed_at)"),
    "action_failures": TableRetention("dead_letters", "toDateTime(failed_at)"),
    # Counts and distinct-output states per minute or hour, journey, stage, channel: no
    # identifiers (output ids are hashes, and kpi_rollup_1h's link to nothing once the
    # experience moments they came from have expired).
    "journey_rollup_1m": TableRetention("rollups", "minute"),
    "moment_rollup_1m": TableRetention("rollups", "minute"),
    "touchpoint_rollup_1m": TableRetention("rollups", "minute"),
    "kpi_rollup_1h": TableRetention("rollups", "hour"),
}
# Tables kept without a TTL, and why.
WITHOUT_RETENTION: Final[dict[str, str]] = {
    "schema_migrations": "which migrations ran and when: no personal data",
    "erasures": "the audit of erasures (docs/operations/erasure.md): no personal data",
}


def ttl_expression(table: str, days: Mapping[str, int]) -> str:
    """The TTL ``table`` should have, as ClickHouse shows it in ``system.tables``."""
    retention = TABLE_RETENTION[table]
    return f"{retention.expires} + toIntervalDay({days[retention.kind]})"


def current_ttls(client: Client, database: str, cluster: str | None = None) -> dict[str, str]:
    """Each MergeTree table's TTL (``""`` for none), by the name writers use (a cluster's
    ``<table>_local`` under ``<table>``)."""
    suffix = "_local" if cluster else ""
    rows = client.query(
        "SELECT name, engine_full FROM system.tables "
        "WHERE database = {db:String} AND engine LIKE '%MergeTree'",
        parameters={"db": database},
    ).result_rows
    found: dict[str, str] = {}
    for name, engine_full in rows:
        if suffix and not str(name).endswith(suffix):
            continue
        table = str(name).removesuffix(suffix)
        text = str(engine_full)
        ttl = ""
        if " TTL " in text:
            ttl = text.split(" TTL ", 1)[1].split(" SETTINGS ", 1)[0].strip()
        found[table] = ttl
    return found


def retention_statements(
    current: Mapping[str, str], database: str, days: Mapping[str, int], cluster: str | None = None
) -> list[str]:
    """The ``ALTER TABLE ... MODIFY TTL`` statements that bring ``current`` to ``days``
    (tables that do not exist yet are left to the migration that creates them)."""
    statements = []
    for table in TABLE_RETENTION:
        if table not in current:
            continue
        wanted = ttl_expression(table, days)
        if current[table] == wanted:
            continue
        target = (
            f"{database}.{table}_local ON CLUSTER '{cluster}'"
            if cluster
            else (f"{database}.{table}")
        )
        statements.append(f"ALTER TABLE {target} MODIFY TTL {wanted}")
    return statements


def apply_retention(
    client: Client, database: str, days: Mapping[str, int], cluster: str | None = None
) -> list[str]:
    """Set every table's TTL from ``days`` (``Settings.retention_days()``); returns the tables
    changed."""
    current = current_ttls(client, database, cluster)
    changed = []
    for statement in retention_statements(current, database, days, cluster):
        client.command(statement)
        changed.append(statement.split()[2].split(".", 1)[1].removesuffix("_local"))
    return changed
