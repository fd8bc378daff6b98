"""Erasure of one customer everywhere (issue 23 item 2; docs/operations/erasure.md).

``journeywatch erase`` and ``POST /api/v1/customers/{id}/erase`` both call ``erase``:

1. every identifier of the stitched person, from ClickHouse (``find_person``);
2. the workers are told to forget the person and its identifiers: a control record
   (``jw-control: erase``, the identifier keys, never raw e-mails or phones) on every partition
   of ``touchpoints.by_person``, which each journey worker applies after the touchpoints before
   it (``JourneyShard.erase``) and saves as deletions;
3. every row holding them is deleted from every ClickHouse table (``delete_person``);
4. an audit row without personal data (``erasures``), also logged.

The workers are told before the rows are deleted: a touchpoint already on its way produces
its outputs before the control record reaches the worker, and the sink may write them after
the deletion; ``erase`` run again (it is idempotent) removes them (docs/operations/erasure.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import orjson
from clickhouse_connect.driver.client import Client

from pipeline.pii import hash_email, hash_phone
from pipeline.settings import Settings
from sinks.clickhouse.erasure import (
    ErasureError,
    ErasureRecord,
    delete_person,
    find_person,
    identifier_key,
    record_erasure,
)
from streams.producer import raw_producer
from streams.topics import BY_PERSON, CONTROL_HEADER

log = logging.getLogger(__name__)

ERASE: bytes = b"erase"  # the control kind (header jw-control)


def pii_key(settings: Settings) -> bytes:
    if settings.pii_hash_key is None:
        raise ErasureError("JW_PII_HASH_KEY is not set: e-mails and phones cannot be hashed")
    return settings.pii_hash_key.get_secret_value().encode()


def requested_keys(
    settings: Settings, customer: str | None, identifiers: Iterable[str]
) -> list[str]:
    """The identifier keys a request names: ``--customer ID`` and ``--identifier kind:value``
    (``email:`` and ``phone:`` raw, hashed with the PII key exactly as the collector does)."""
    keys: list[str] = []
    if customer:
        keys.append(identifier_key("customer_id", customer))
    for given in identifiers:
        kind, sep, value = given.partition(":")
        if not sep or not value:
            raise ErasureError("an identifier is kind:value (customer_id:..., email:..., ...)")
        if kind == "email":
            kind, value = "email_hash", hash_email(value, pii_key(settings))
        elif kind == "phone":
            value = hash_phone(value, pii_key(settings), settings.phone_default_country_code)
            kind = "phone_hash"
        keys.append(identifier_key(kind, value))
    if not keys:
        raise ErasureError("name the customer (--customer) or an identifier (--identifier)")
    return keys


def tell_workers(settings: Settings, keys: Iterable[str]) -> int:
    """One ``erase`` control record on every partition of ``touchpoints.by_person``; returns
    how many partitions were told."""
    by_person = settings.topic(BY_PERSON)
    body = orjson.dumps({"erase": sorted(keys)})
    producer = raw_producer(settings)
    try:
        partitions = sorted(producer.partitions_for(by_person) or ())
        for partition in partitions:
            producer.send(
                by_person, value=body, partition=partition, headers=[(CONTROL_HEADER, ERASE)]
            )
        producer.flush()
    finally:
        producer.close()
    return len(partitions)


def erase(
    settings: Settings,
    client: Client,
    keys: list[str],
    requested_by: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ErasureRecord:
    """Erase the person ``keys`` name (``requested_keys``) everywhere; the audit record."""
    database = settings.clickhouse_database
    person = find_person(client, database, keys)
    try:
        told = tell_workers(settings, person.identifiers)
    except Exception as exc:  # (kafka-python's errors: no broker, no topic, not authorised)
        raise ErasureError(
            f"cannot tell the workers through Kafka ({type(exc).__name__}: {exc}); nothing was "
            "deleted: run the erasure again when the broker answers"
        ) from exc
    rows = delete_person(client, database, person, settings.clickhouse_cluster)
    record = ErasureRecord.of(keys, person, rows, told, requested_by, pii_key(settings), now())
    record_erasure(client, database, record)
    log.info(
        "erasure %s by %s: %d identifiers, %d persons, %d shared kept, rows deleted %s, "
        "%d partitions told",
        record.erasure_id,
        requested_by,
        record.identifiers,
        record.persons,
        record.shared_kept,
        ", ".join(f"{table} {count}" for table, count in rows.items()),
        told,
    )
    return record


def admin_token(settings: Settings) -> str | None:
    """The admin token a command sends to the sink's API (erasure needs the admin role)."""
    from streams.webauth import configured_tokens, generated_token_path

    token = configured_tokens(settings).get("admin")
    if token:
        return token
    try:
        return generated_token_path(settings).read_text().strip() or None
    except OSError:
        return None


def erase_via_api(settings: Settings, api: str, customer: str) -> dict[str, object]:
    """``POST /api/v1/customers/{id}/erase`` on a running journeywatch (which owns ClickHouse
    in the embedded mode), with the admin token; the audit record it answers."""
    import urllib.error
    import urllib.parse
    import urllib.request

    if not api.startswith(("http://", "https://")):
        raise ErasureError("--api must be an http(s) URL")
    token = admin_token(settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{api.rstrip('/')}/api/v1/customers/{urllib.parse.quote(customer, safe='')}/erase"
    request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - http(s)
            return dict(orjson.loads(response.read()))
    except urllib.error.HTTPError as exc:
        hint = (
            " (set JW_WEB_ADMIN_TOKEN to the sink's admin token)" if exc.code in (401, 403) else ""
        )
        raise ErasureError(f"journeywatch at {api} answered HTTP {exc.code}{hint}") from exc
    except OSError as exc:
        raise ErasureError(f"cannot reach journeywatch at {api}: {exc}") from exc


def erase_directly(
    settings: Settings, customer: str | None, identifiers: list[str], requested_by: str = "cli"
) -> dict[str, object]:
    """``journeywatch erase`` without ``--api``: this process opens ClickHouse itself."""
    from sinks.clickhouse.client import connect
    from streams.runtime import ensure_pii_key

    settings = ensure_pii_key(settings)  # (an embedded run's key, kept under data_dir)
    keys = requested_keys(settings, customer, identifiers)
    client = connect(settings.clickhouse_dsn)
    return erase(settings, client, keys, requested_by).as_dict()
