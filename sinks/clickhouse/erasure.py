"""Erasure of one person from ClickHouse (docs/operations/erasure.md).

``find_person`` follows a customer (or any identifier) to every identifier of the stitched
person: the identifier columns of the touchpoints that carry one of them, and the identity
merges reported in ``journey_events`` (``identity``/``merged``: an anonymous person joined to
the customer), transitively, for at most ``MAX_ROUNDS`` rounds and ``MAX_IDENTIFIERS``
identifiers. An identifier seen on a touchpoint of *another* customer (a shared tablet, a
family e-mail) is not followed and not erased: it is counted in ``shared``.

``delete_person`` deletes every row that holds them, table by table, with lightweight
``DELETE FROM`` (on a cluster on the shards' local tables, ``ON CLUSTER``), as the writer
deletes retracted drop-offs; ``record_erasure`` writes the audit row (``erasures``, no
personal data). The rollups (``journey_rollup_1m``, ``moment_rollup_1m``,
``touchpoint_rollup_1m``, ``kpi_rollup_1h``) hold counts per minute or hour, journey, stage
and channel, and output ids (hashes): no identifiers, so they are left as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from clickhouse_connect.driver.client import Client

IDENTIFIER_COLUMNS: Final = (
    "customer_id",
    "loyalty_id",
    "email_hash",
    "phone_hash",
    "device_id",
    "anonymous_id",
)
CUSTOMER: Final = "customer_id:"
MAX_ROUNDS: Final = 8
MAX_IDENTIFIERS: Final = 10_000
# every table that may hold an identifier or a person id, in the order they are erased
ERASED_TABLES: Final = (
    "touchpoints",
    "touchpoints_by_identifier",
    "journey_events",
    "experience_moments",
    "person_outputs",
    "identity_links",
    "journey_state_agg",
    "failed_events",
    "journey_errors",
    "action_failures",  # closed-loop actions not delivered (migration 0013, docs/actions.md)
)
UNTOUCHED_ROLLUPS: Final = (
    "journey_rollup_1m",
    "moment_rollup_1m",
    "touchpoint_rollup_1m",
    "kpi_rollup_1h",
)
_NEEDLES_PER_STATEMENT: Final = 200  # multiSearchAny takes at most 255 needles


class ErasureError(ValueError):
    """A request that cannot be erased as asked (nothing to erase by, or too much)."""


@dataclass
class Person:
    """What ``find_person`` found: identifier keys (``kind:value``), person ids, the
    identifiers left alone because another customer used them too."""

    identifiers: set[str] = field(default_factory=set)
    persons: set[str] = field(default_factory=set)
    shared: set[str] = field(default_factory=set)


def identifier_key(kind: str, value: str) -> str:
    if kind not in IDENTIFIER_COLUMNS:
        raise ErasureError(
            f"unknown identifier kind {kind!r}: one of {', '.join(IDENTIFIER_COLUMNS)}"
        )
    if not value:
        raise ErasureError(f"an empty {kind}")
    return kind + ":" + value


def _person_ids(keys: Iterable[str]) -> set[str]:
    """The person ids anchored at ``keys``: ``c:<id>`` for a customer, ``a:<key>`` otherwise."""
    return {"c:" + k[len(CUSTOMER) :] if k.startswith(CUSTOMER) else "a:" + k for k in keys}


def _by_kind(keys: Iterable[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key in sorted(keys):
        kind, _, value = key.partition(":")
        found.setdefault(kind, []).append(value)
    return found


def _holds(keys: Iterable[str]) -> tuple[str, dict[str, Any]]:
    """A WHERE condition on ``touchpoints``: the row carries one of ``keys``."""
    terms: list[str] = []
    parameters: dict[str, Any] = {}
    for kind, values in _by_kind(keys).items():
        terms.append(f"{kind} IN {{{kind}:Array(String)}}")
        parameters[kind] = values
    return " OR ".join(terms) or "0", parameters


def find_person(client: Client, database: str, start: Iterable[str]) -> Person:
    """Every identifier and person id of the person ``start`` (identifier keys) names."""
    found = Person(identifiers=set(start))
    customers = {k[len(CUSTOMER) :] for k in found.identifiers if k.startswith(CUSTOMER)}
    if len(customers) > 1:
        raise ErasureError("erase one customer at a time")
    for _ in range(MAX_ROUNDS):
        before = (len(found.identifiers), len(found.persons), len(found.shared))
        found.persons |= _person_ids(found.identifiers)
        where, parameters = _holds(found.identifiers)
        columns = ", ".join(IDENTIFIER_COLUMNS)
        rows = client.query(
            f"SELECT DISTINCT {columns} FROM {database}.touchpoints WHERE {where}",
            parameters=parameters,
        ).result_rows
        for row in rows:
            keys = {
                kind + ":" + str(v) for kind, v in zip(IDENTIFIER_COLUMNS, row, strict=True) if v
            }
            customer = str(row[0])
            if customer and customers and customer not in customers:
                found.shared |= keys & found.identifiers  # another customer's touchpoint
                continue
            if customer:
                customers.add(customer)
            found.identifiers |= keys
        merges = client.query(
            f"SELECT DISTINCT person_id, JSONExtractString(detail, 'from_person') "
            f"FROM {database}.journey_events WHERE type = 'identity' AND name = 'merged' "
            "AND (person_id IN {p:Array(String)} "
            "OR JSONExtractString(detail, 'from_person') IN {p:Array(String)})",
            parameters={"p": sorted(found.persons)},
        ).result_rows
        for into, source in merges:
            into, source = str(into), str(source)
            if into.startswith("c:") and customers and into[2:] not in customers:
                continue  # another customer's merge: not this person
            for person in (into, source):
                if person.startswith("c:"):
                    customers.add(person[2:])
                    found.identifiers.add(CUSTOMER + person[2:])
                elif person.startswith("a:"):
                    found.identifiers.add(person[2:])
                found.persons.add(person)
        if len(customers) > 1:
            raise ErasureError("the identifiers lead to more than one customer: erase each one")
        found.identifiers -= found.shared
        found.persons -= _person_ids(found.shared)
        if len(found.identifiers) > MAX_IDENTIFIERS:
            raise ErasureError(
                f"more than {MAX_IDENTIFIERS} identifiers: is a shared identifier among them?"
            )
        if (len(found.identifiers), len(found.persons), len(found.shared)) == before:
            break
    return found


def _quoted(values: Iterable[str]) -> list[str]:
    """How a value appears inside JSON text (a dead letter's bytes): a quoted string."""
    return ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]


def _conditions(person: Person, journeys: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each table's WHERE condition for the rows ``person`` holds, and its parameters."""
    persons = {"persons": sorted(person.persons)}
    holds, by_kind = _holds(person.identifiers)
    values = sorted({key.partition(":")[2] for key in person.identifiers} | person.persons)
    needles = _quoted(values)
    chunks = [
        needles[i : i + _NEEDLES_PER_STATEMENT]
        for i in range(0, len(needles), _NEEDLES_PER_STATEMENT)
    ] or [[]]
    text: dict[str, Any] = {f"n{i}": chunk for i, chunk in enumerate(chunks)}
    in_text = " OR ".join(
        f"multiSearchAny({{column}}, {{n{i}:Array(String)}})" for i in range(len(chunks))
    )
    keys = sorted({"p:" + p for p in person.persons} | {"i:" + k for k in person.identifiers})
    return {
        "touchpoints": (holds, by_kind),
        "journey_events": (
            "person_id IN {persons:Array(String)} OR (type = 'identity' AND name = 'merged' "
            "AND JSONExtractString(detail, 'from_person') IN {persons:Array(String)})",
            persons,
        ),
        "experience_moments": ("person_id IN {persons:Array(String)}", persons),
        # the customer timeline's copies (migration 0012)
        "touchpoints_by_identifier": (
            "hasAny(identifiers, {identifiers:Array(String)})",
            {"identifiers": sorted(person.identifiers)},
        ),
        "person_outputs": ("person_id IN {persons:Array(String)}", persons),
        "identity_links": (
            "person_id IN {persons:Array(String)} OR identifier IN {persons:Array(String)} "
            "OR identifier IN {identifiers:Array(String)}",
            {"identifiers": sorted(person.identifiers), **persons},
        ),
        "journey_state_agg": (
            "journey_id IN {journeys:Array(String)} "
            "OR finalizeAggregation(person_id) IN {persons:Array(String)}",
            {"journeys": journeys, **persons},
        ),
        "failed_events": (
            " OR ".join(
                "(" + in_text.replace("{column}", column) + ")"
                for column in ("raw", "detail", "field")
            ),
            text,
        ),
        "journey_errors": (
            "original_key IN {keys:Array(String)} OR "
            + " OR ".join(
                "(" + in_text.replace("{column}", column) + ")" for column in ("value", "detail")
            ),
            {"keys": keys, **text},
        ),
        "action_failures": ("person_id IN {persons:Array(String)}", persons),
    }


def delete_person(
    client: Client, database: str, person: Person, cluster: str | None = None
) -> dict[str, int]:
    """Delete every row ``person`` holds; the number of rows deleted per table."""
    if not person.identifiers and not person.persons:
        return dict.fromkeys(ERASED_TABLES, 0)
    journeys = sorted(
        {
            str(row[0])
            for table in ("journey_events", "experience_moments")
            for row in client.query(
                f"SELECT DISTINCT journey_id FROM {database}.{table} "
                "WHERE person_id IN {persons:Array(String)} AND journey_id != ''",
                parameters={"persons": sorted(person.persons)},
            ).result_rows
        }
    )
    counts: dict[str, int] = {}
    for table, (where, parameters) in _conditions(person, journeys).items():
        count = client.query(
            f"SELECT count() FROM {database}.{table} WHERE {where}", parameters=parameters
        ).result_rows[0][0]
        counts[table] = int(count)
        if not count:
            continue
        target = (
            f"{database}.{table}_local ON CLUSTER '{cluster}'" if cluster else f"{database}.{table}"
        )
        client.command(
            f"DELETE FROM {target} WHERE {where}",
            parameters=parameters,
            settings={"lightweight_deletes_sync": 2},
        )
    return counts


def request_hash(keys: Iterable[str], salt: str, key: bytes) -> str:
    """HMAC-SHA256 under the PII key of the salt and the request's identifier keys."""
    text = salt + "\n" + "\n".join(sorted(keys))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ErasureRecord:
    """The audit row: who, when, how much, never what."""

    erasure_id: str
    erased_at: datetime
    requested_by: str
    salt: str
    request_hash: str
    identifiers: int
    persons: int
    shared_kept: int
    rows_deleted: dict[str, int]
    partitions_told: int

    @classmethod
    def of(
        cls,
        requested: Iterable[str],
        person: Person,
        rows: dict[str, int],
        partitions: int,
        requested_by: str,
        key: bytes,
        now: datetime,
    ) -> ErasureRecord:
        salt = secrets.token_hex(16)
        return cls(
            str(uuid.uuid4()),
            now,
            requested_by,
            salt,
            request_hash(requested, salt, key),
            len(person.identifiers),
            len(person.persons),
            len(person.shared),
            rows,
            partitions,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "erasure_id": self.erasure_id,
            "erased_at": self.erased_at.isoformat(),
            "requested_by": self.requested_by,
            "request_hash": self.request_hash,
            "identifiers": self.identifiers,
            "persons": self.persons,
            "shared_kept": self.shared_kept,
            "rows_deleted": self.rows_deleted,
            "partitions_told": self.partitions_told,
        }


def record_erasure(client: Client, database: str, record: ErasureRecord) -> None:
    client.insert(
        f"{database}.erasures",
        [
            [
                record.erasure_id,
                record.erased_at,
                record.requested_by,
                record.salt,
                record.request_hash,
                record.identifiers,
                record.persons,
                record.shared_kept,
                record.rows_deleted,
                record.partitions_told,
            ]
        ],
        column_names=[
            "erasure_id",
            "erased_at",
            "requested_by",
            "salt",
            "request_hash",
            "identifiers",
            "persons",
            "shared_kept",
            "rows_deleted",
            "partitions_told",
        ],
    )
