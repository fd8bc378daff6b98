"""The ingest agent: raw bytes in, validated events or dead letters out.

Validation happens here, once. Valid events go to ``touchpoints.by_person`` keyed by the
person's strongest identifier, with the e-mail addresses and phone numbers of their free text
replaced (``JW_FREE_TEXT_PII``); everything else goes to ``touchpoints.dlq`` with the reason
and its bytes redacted.
An input record is acknowledged, and its offset may be committed, only once the broker has
acknowledged what it produced (at-least-once).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import faust
from faust.types import Message

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.deadletter import dead_letter_headers
from pipeline.pii import REDACT, FreeTextScrubber, redact
from pipeline.settings import Settings
from sinks.metrics import EVENTS_ACCEPTED, EVENTS_REJECTED, INGEST_BATCH_SECONDS, LabelCache
from streams.batching import BatchSender
from streams.faust_internals import deliver_in_batches, faust_producer
from streams.topics import BY_PERSON, DLQ, RAW

# The ingest measures an event's age from its Kafka record time, a little later than the
# collector's or the importer's received_at: an event they accepted at the very edge of the
# retention must not be dead-lettered after its 202.
INGEST_AGE_SLACK = timedelta(hours=1)


def register_ingest(app: faust.App, settings: Settings) -> None:
    by_person = settings.topic(BY_PERSON)
    dead_letters = settings.topic(DLQ)
    accepted = LabelCache(EVENTS_ACCEPTED)
    rejected = LabelCache(EVENTS_REJECTED)
    sender = BatchSender(faust_producer(app), settings.partitions)
    size = settings.ingest_batch_size
    max_age = settings.touchpoint_max_age + INGEST_AGE_SLACK
    free_text = _free_text(settings)

    async def ingest(messages: list[Message]) -> None:
        # Whole fetches (streams/faust_internals.py), produced as record batches; the broker
        # acknowledges all of a chunk before any of its input is acknowledged (and may be
        # committed): at-least-once.
        consumer = app.consumer
        for start in range(0, len(messages), size):
            chunk = messages[start : start + size]
            started = time.perf_counter()
            for message in chunk:
                _ingest_one(message)
            await sender.send()
            for message in chunk:
                message.ack(consumer)
            INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)

    def _ingest_one(message: Message) -> None:
        raw = message.value if isinstance(message.value, bytes) else b""
        received_at = datetime.fromtimestamp(message.timestamp, UTC)
        result = decode_touchpoint(raw, received_at, max_age)
        if isinstance(result, TouchpointEvent):
            result = free_text.touchpoint(result)  # produced without the collector, perhaps
            accepted.get(result.channel.value).inc()
            sender.add_keyed(by_person, result.person_key(), result.to_json())
            return
        rejected.get(result.channel, result.reason.value).inc()
        headers = dead_letter_headers(
            result, message.topic, message.partition, message.offset, datetime.now(UTC)
        )
        key = message.key if isinstance(message.key, bytes) else None
        sender.add_partitioned(
            dead_letters,
            key,
            redact(raw),
            [(name, value.encode()) for name, value in headers.items()],
            fallback=message.partition,
        )

    deliver_in_batches(app, [settings.topic(RAW)], ingest)


def _free_text(settings: Settings) -> FreeTextScrubber:
    """E-mail addresses and phone numbers in the free text of events produced to
    ``touchpoints.raw`` directly (not through the collector or the importer, which did it
    already: what they wrote holds none) are replaced here, as ``JW_FREE_TEXT_PII`` says;
    ``hash`` without ``JW_PII_HASH_KEY`` (a worker need not have it) redacts."""
    if settings.free_text_pii == "hash" and settings.pii_hash_key is None:
        return REDACT
    key = settings.pii_hash_key.get_secret_value().encode() if settings.pii_hash_key else b""
    return FreeTextScrubber(settings.free_text_pii, key, settings.phone_default_country_code)
