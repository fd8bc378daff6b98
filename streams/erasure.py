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
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import orjson
from clickhouse_connect.driver.client import Client
from kafka import KafkaConsumer, TopicPartition

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
from streams.offsets import committed_offsets, confirmed_end_offsets
from streams.producer import raw_producer
from streams.topics import (
    BY_PERSON,
    CONTROL_HEADER,
    EXPERIENCE_MOMENTS,
    JOURNEY_EVENTS,
    kafka_connection,
)

log = logging.getLogger(__name__)

ERASE: bytes = b"erase"  # the control kind (header jw-control)
WAIT_S = 60.0  # how long an erasure waits for the pipeline to apply its control records


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


def tell_workers(settings: Settings, keys: Iterable[str]) -> dict[int, int]:
    """One ``erase`` control record on every partition of ``touchpoints.by_person``; the
    offset each was written at, by partition."""
    by_person = settings.topic(BY_PERSON)
    body = orjson.dumps({"erase": sorted(keys)})
    producer = raw_producer(settings)
    try:
        partitions = sorted(producer.partitions_for(by_person) or ())
        sent = [
            (
                p,
                producer.send(
                    by_person, value=body, partition=p, headers=[(CONTROL_HEADER, ERASE)]
                ),
            )
            for p in partitions
        ]
        producer.flush()
        return {p: int(future.get(timeout=60).offset) for p, future in sent}
    finally:
        producer.close()


def wait_until_applied(settings: Settings, told: dict[int, int], timeout_s: float) -> bool:
    """Wait (at most ``timeout_s``) until the journey workers have committed past the control
    records ``told`` (so every output of the touchpoints before them is produced) and the sink
    has then committed what its topics held (so those outputs are in ClickHouse): the rows
    deleted next cannot come back from the pipeline. False when time ran out (the workers or
    the sink are not running, or a worker holds older input for its watermark): the control
    records wait in the topic for the workers, and rows written meanwhile are removed by the
    same erasure run again."""
    if timeout_s <= 0:
        return False
    by_person = settings.topic(BY_PERSON)
    deadline = time.monotonic() + timeout_s
    workers = settings.topic("journeywatch")
    while True:
        committed = committed_offsets(settings, workers)
        if all(committed.get(TopicPartition(by_person, p), 0) > o for p, o in told.items()):
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)  # polling the group's committed offsets
    topics = [settings.topic(t) for t in (BY_PERSON, JOURNEY_EVENTS, EXPERIENCE_MOMENTS)]
    consumer = KafkaConsumer(**kafka_connection(settings))
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
    finally:
        consumer.close()
    ends = confirmed_end_offsets(settings, partitions)
    sink = settings.topic("journeywatch-sink")
    while True:
        committed = committed_offsets(settings, sink)
        if all(end == 0 or committed.get(tp, 0) >= end for tp, end in ends.items()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def erase(
    settings: Settings,
    client: Client,
    keys: list[str],
    requested_by: str,
    wait_s: float = WAIT_S,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ErasureRecord:
    """Erase the person ``keys`` name (``requested_keys``) everywhere; the audit record.
    Waits up to ``wait_s`` for the pipeline to apply the control records first
    (``wait_until_applied``)."""
    database = settings.clickhouse_database
    person = find_person(client, database, keys)
    try:
        told = tell_workers(settings, person.identifiers)
    except Exception as exc:  # (kafka-python's errors: no broker, no topic, not authorised)
        raise ErasureError(
            f"cannot tell the workers through Kafka ({type(exc).__name__}: {exc}); nothing was "
            "deleted: run the erasure again when the broker answers"
        ) from exc
    applied = wait_until_applied(settings, told, wait_s)
    if not applied and wait_s > 0:
        log.warning(
            "erasure: the workers and the sink did not confirm the control records in time; "
            "deleting now (run the erasure again later to remove rows written meanwhile)",
            extra={"waited_s": wait_s},
        )
    rows = delete_person(client, database, person, settings.clickhouse_cluster)
    record = ErasureRecord.of(keys, person, rows, len(told), requested_by, pii_key(settings), now())
    record_erasure(client, database, record)
    log.info("erasure done", extra=record.as_dict())  # the audit record: no personal data
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
    settings: Settings,
    customer: str | None,
    identifiers: list[str],
    requested_by: str = "cli",
    wait_s: float = WAIT_S,
) -> dict[str, object]:
    """``journeywatch erase`` without ``--api``: this process opens ClickHouse itself."""
    from sinks.clickhouse.client import connect
    from streams.runtime import ensure_pii_key

    settings = ensure_pii_key(settings)  # (an embedded run's key, kept under data_dir)
    keys = requested_keys(settings, customer, identifiers)
    client = connect(settings.clickhouse_dsn)
    return erase(settings, client, keys, requested_by, wait_s).as_dict()
