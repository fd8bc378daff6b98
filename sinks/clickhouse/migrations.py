"""Versioned, idempotent SQL migrations, recorded in ``schema_migrations``.

Each file ``NNNN_name.sql`` under ``migrations/`` is applied once, in order. Statements use
``{db}`` and ``{retention_days}`` placeholders. A file that changed after it was applied is an
error: write a new migration instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

from sinks.clickhouse.retention import apply_retention

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Of the SQL without comments: editing a comment is not a schema change."""
        code = "\n".join(
            line.rstrip() for line in self.sql.splitlines() if not line.strip().startswith("--")
        )
        return hashlib.sha256(code.encode()).hexdigest()

    def statements(self, cluster: str | None = None, **params: object) -> list[str]:
        """The statements to run; with ``cluster``, their replicated, sharded variant."""
        rendered: list[str] = []
        for lines in _blocks(self.sql):
            shard_by = next(
                (
                    line.split("shard_by:", 1)[1].strip()
                    for line in lines
                    if line.strip().startswith("-- shard_by:")
                ),
                "rand()",
            )
            text = "\n".join(line for line in lines if not line.strip().startswith("--")).strip()
            if not text:
                continue
            text = text.format(**params)
            if cluster:
                rendered.extend(cluster_variant(text, cluster, str(params["db"]), shard_by))
            else:
                rendered.append(text)
        return rendered


def _blocks(sql: str) -> list[list[str]]:
    """A migration's statements, as lines: split at each ``;`` outside ``--`` comments (a
    comment may hold one: it ends no statement)."""
    blocks: list[list[str]] = [[]]
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            blocks[-1].append(line)
            continue
        *ended, rest = line.split(";")
        for part in ended:
            blocks[-1].append(part)
            blocks.append([])
        blocks[-1].append(rest)
    return blocks


class MigrationError(RuntimeError):
    pass


_CREATE_RE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<db>\w+)\.(?P<table>\w+)\s*(?P<body>\(.*?\))\s*"
    r"ENGINE\s*=\s*(?P<engine>\w*MergeTree)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$",
    re.S,
)


_VIEW_RE = re.compile(
    r"^CREATE (?P<kind>MATERIALIZED VIEW|VIEW) IF NOT EXISTS (?P<name>\w+\.\w+)\s+"
    r"(?:TO (?P<target>\w+\.\w+)\s+)?AS\s+(?P<select>.*)$",
    re.S,
)


_REPLACE_VIEW_RE = re.compile(
    r"^CREATE OR REPLACE VIEW (?P<name>\w+\.\w+)\s+AS\s+(?P<select>.*)$", re.S
)
_ALTER_RE = re.compile(r"^ALTER TABLE (?P<table>\w+\.\w+)\s+(?P<rest>.*)$", re.S)
_DROP_VIEW_RE = re.compile(r"^DROP VIEW IF EXISTS (?P<name>\w+\.\w+)\s*$")


def _view_variant(view: re.Match[str], cluster: str, db: str) -> str:
    """A view on every node. A materialized view is fired by inserts into the shard's local
    table and writes the shard's local table; a plain view reads the Distributed tables."""
    select = view["select"]
    head = f"CREATE {view['kind']} IF NOT EXISTS {view['name']} ON CLUSTER '{cluster}'"
    if view["kind"] == "VIEW":
        return f"{head} AS\n{select}"
    select = re.sub(rf"\bFROM {db}\.(\w+)", rf"FROM {db}.\1_local", select)
    return f"{head} TO {view['target']}_local AS\n{select}"


def cluster_variant(statement: str, cluster: str, db: str, shard_by: str) -> list[str]:
    """A table on a cluster: ``<table>_local``, replicated on every shard, and ``<table>``,
    a Distributed table over them, so writers and analysts keep using the same name.

    Rows that must collapse together (one ``event_id``) must share a shard: migrations say
    how with a ``-- shard_by: <expression>`` comment (default ``rand()``). ``ALTER TABLE``
    runs on the local tables and the Distributed ones; ``CREATE OR REPLACE VIEW`` and
    ``DROP VIEW IF EXISTS`` on every node; an ``INSERT ... SELECT`` (a backfill) runs once,
    through the Distributed tables.
    """
    view = _VIEW_RE.match(statement)
    if view is not None:
        return [_view_variant(view, cluster, db)]
    on = f"ON CLUSTER '{cluster}'"
    replace = _REPLACE_VIEW_RE.match(statement)
    if replace is not None:  # a plain view: it reads the Distributed tables
        return [f"CREATE OR REPLACE VIEW {replace['name']} {on} AS\n{replace['select']}"]
    alter = _ALTER_RE.match(statement)
    if alter is not None:  # the shards' local tables, then the Distributed table over them
        table, rest = alter["table"], alter["rest"]
        return [f"ALTER TABLE {table}_local {on} {rest}", f"ALTER TABLE {table} {on} {rest}"]
    drop = _DROP_VIEW_RE.match(statement)
    if drop is not None:
        return [f"DROP VIEW IF EXISTS {drop['name']} {on}"]
    match = _CREATE_RE.match(statement)
    if match is None:
        if statement.startswith(("CREATE", "ALTER", "DROP")) and " ON CLUSTER " not in statement:
            raise MigrationError(f"no cluster variant for: {statement.splitlines()[0]}")
        return [statement]
    table, engine, args = match["table"], match["engine"], (match["args"] or "").strip()
    path = f"'/clickhouse/tables/{{shard}}/{db}/{table}_local', '{{replica}}'"
    engine_args = f"{path}, {args}" if args else path
    local = (
        f"CREATE TABLE IF NOT EXISTS {db}.{table}_local ON CLUSTER '{cluster}' {match['body']}\n"
        f"ENGINE = Replicated{engine}({engine_args}){match['rest']}"
    )
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER '{cluster}' AS {db}.{table}_local\n"
        f"ENGINE = Distributed('{cluster}', '{db}', '{table}_local', {shard_by})"
    )
    return [local, distributed]


def load_migrations() -> list[Migration]:
    folder = resources.files("sinks.clickhouse").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


def bookkeeping_statements(database: str, cluster: str | None = None) -> list[str]:
    """The database and the ``schema_migrations`` table (one copy for the whole cluster)."""
    columns = (
        "(version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
    )
    if not cluster:
        return [
            f"CREATE DATABASE IF NOT EXISTS {database}",
            f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations {columns} "
            "ENGINE = ReplacingMergeTree ORDER BY version",
        ]
    return [
        f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER '{cluster}'",
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations ON CLUSTER '{cluster}' {columns} "
        f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/schema_migrations', "
        "'{replica}') ORDER BY version",
    ]


def apply_migrations(
    client: Client,
    database: str,
    retention_days: int,
    cluster: str | None = None,
    retention: Mapping[str, int] | None = None,
) -> list[Migration]:
    """Bring ``database`` up to date; returns the migrations applied now (none if current).

    With ``cluster``, tables are created ``ON CLUSTER`` as replicated ``<table>_local`` tables
    behind Distributed tables of the usual names (docs/operations/clickhouse-cluster.md).
    Tables are created with ``retention_days``; with ``retention`` (``Settings.retention_days()``)
    every table's TTL is then set from it, on every call (sinks/clickhouse/retention.py).
    """
    for statement in bookkeeping_statements(database, cluster):
        client.command(statement)
    applied = {
        int(row[0]): str(row[1])
        for row in client.query(
            f"SELECT version, argMax(checksum, applied_at) FROM {database}.schema_migrations "
            "GROUP BY version"
        ).result_rows
    }
    done_now = []
    for migration in load_migrations():
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}.sql changed after it "
                    f"was applied to {database}; add a new migration instead of editing it"
                )
            continue
        statements = migration.statements(cluster, db=database, retention_days=retention_days)
        for statement in statements:
            client.command(statement)
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        done_now.append(migration)
    if retention is not None:
        apply_retention(client, database, retention, cluster)
    return done_now
