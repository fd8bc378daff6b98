"""Erasure in ClickHouse (sinks/clickhouse/erasure.py) on a real embedded ClickHouse: the
person's identifiers are found through touchpoints and identity merges, every row holding
them goes from every table, other customers' rows stay, the audit row holds no identifier."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from sinks.clickhouse.erasure import (
    ERASED_TABLES,
    ErasureRecord,
    delete_person,
    find_person,
    record_erasure,
)
from sinks.clickhouse.migrations import apply_migrations
from tests.helpers import ClickHouse

pytestmark = pytest.mark.integration

AT = datetime(2026, 12, 1, 10, tzinfo=UTC)
JANE = {"customer_id": "jane-7", "email_hash": "feedc0ffee", "device_id": "dev-jane"}
ANON = {"anonymous_id": "anon-jane"}  # her visits before signing in
OTHER = {"customer_id": "other-2", "device_id": "dev-other"}
JANE_WORDS = ["jane-7", "feedc0ffee", "dev-jane", "anon-jane"]


def _touch(client, db: str, event_id: str, ids: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    columns = ["event_id", "occurred_at", "received_at", "channel", "touchpoint", *ids]
    client.insert(
        f"{db}.touchpoints",
        [[event_id, AT, AT, "web", "home.view", *ids.values()]],
        column_names=columns,
    )


def _output(client, db: str, table: str, oid: str, person: str, **more: str) -> None:  # type: ignore[no-untyped-def]
    row = {"output_id": oid, "type": "journey", "name": "started", "at": AT, "person_id": person}
    row.update(more)
    client.insert(f"{db}.{table}", [list(row.values())], column_names=list(row))


def _dump(client, db: str) -> str:  # type: ignore[no-untyped-def]
    text = []
    for table in (*ERASED_TABLES, "erasures"):
        columns = "*"
        if table == "journey_state_agg":
            columns = "journey_id, finalizeAggregation(person_id)"
        rows = client.query(f"SELECT {columns} FROM {db}.{table}").result_rows
        text.append(repr(rows))
    return "\n".join(text)


def test_every_row_of_the_person_goes_and_the_others_stay(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    apply_migrations(client, db, 30)
    _touch(client, db, "e1", ANON | {"device_id": "dev-jane"})
    _touch(client, db, "e2", JANE)
    _touch(client, db, "e3", OTHER)
    journey = {"journey": "purchase", "journey_id": "j-jane"}
    _output(client, db, "journey_events", "o1", "c:jane-7", **journey)
    _output(client, db, "journey_events", "o2", "c:other-2", journey="purchase", journey_id="j-o")
    merged = {
        "type": "identity",
        "name": "merged",
        "detail": '{"from_person":"a:anonymous_id:anon-jane"}',
    }
    _output(client, db, "journey_events", "o3", "c:jane-7", **merged)
    _output(client, db, "journey_events", "o4", "a:anonymous_id:anon-jane", journey_id="j-anon")
    _output(client, db, "experience_moments", "m1", "c:jane-7", journey_id="j-jane")
    _output(client, db, "experience_moments", "m2", "c:other-2", journey_id="j-o")
    client.insert(
        f"{db}.failed_events",
        [
            [AT, "invalid", "x", "", orjson.dumps({"customer_id": "jane-7"}).decode()],
            [AT, "invalid", "x", "", orjson.dumps({"customer_id": "other-2"}).decode()],
        ],
        column_names=["failed_at", "reason", "field", "detail", "raw"],
    )
    client.insert(
        f"{db}.journey_errors",
        [[AT, "state", "ValueError", "p:c:jane-7", "[]"], [AT, "state", "E", "p:c:other-2", ""]],
        column_names=["failed_at", "kind", "reason", "original_key", "value"],
    )
    person = find_person(client, db, ["customer_id:jane-7"])
    assert person.identifiers == {
        "customer_id:jane-7",
        "email_hash:feedc0ffee",
        "device_id:dev-jane",
        "anonymous_id:anon-jane",
    }
    assert "a:anonymous_id:anon-jane" in person.persons and "c:jane-7" in person.persons
    rows = delete_person(client, db, person)
    assert rows["touchpoints"] == 2 and rows["journey_events"] == 3
    assert rows["experience_moments"] == 1 and rows["failed_events"] == 1
    assert rows["journey_errors"] == 1 and rows["journey_state_agg"] >= 1
    record = ErasureRecord.of(["customer_id:jane-7"], person, rows, 4, "cli", b"k", AT)
    record_erasure(client, db, record)
    dump = _dump(client, db)
    assert not [w for w in JANE_WORDS if w in dump]
    assert "other-2" in dump and "dev-other" in dump
    assert client.query(f"SELECT count() FROM {db}.touchpoints").result_rows[0][0] == 1
    assert client.query(f"SELECT count() FROM {db}.journeys").result_rows[0][0] == 1
    audit = client.query(f"SELECT requested_by, identifiers, rows_deleted FROM {db}.erasures")
    assert audit.result_rows[0][:2] == ("cli", 4)
    # again: nothing left to delete
    again = delete_person(client, db, find_person(client, db, ["customer_id:jane-7"]))
    assert set(again.values()) == {0}
