"""Versioned, idempotent SQL migrations, recorded in ``schema_migrations``.

Each file ``NNNN_name.sql`` under ``migrations/`` is applied once, in order. Statements use
``{db}`` and ``{retention_days}`` placeholders. A file that changed after it was applied is an
error: write a new migration instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, **params: object) -> list[str]:
        text = "\n".join(
            line for line in self.sql.splitlines() if not line.strip().startswith("--")
        )
        rendered = text.format(**params)
        return [part.strip() for part in rendered.split(";") if part.strip()]


class MigrationError(RuntimeError):
    pass


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


def apply_migrations(client: Client, database: str, retention_days: int) -> list[Migration]:
    """Bring ``database`` up to date; returns the migrations applied now (none if current)."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') "
        "DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
    )
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
        for statement in migration.statements(db=database, retention_days=retention_days):
            client.command(statement)
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        done_now.append(migration)
    return done_now
