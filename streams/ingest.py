"""The ingest agent: raw bytes in, validated events or dead letters out.

Validation happens here, once. Valid events go to ``touchpoints.by_person`` keyed by the
person's strongest identifier; everything else goes to ``touchpoints.dlq`` with the reason.
Offsets of ``touchpoints.raw`` are committed by Faust only after the produced records are
flushed (at-least-once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.deadletter import dead_letter_headers
from pipeline.pii import redact
from pipeline.settings import Settings
from sinks.metrics import EVENTS_ACCEPTED, EVENTS_REJECTED, INGEST_BATCH_SECONDS, LabelCache
from streams.topics import BY_PERSON, DLQ, RAW


def register_ingest(app: faust.App, settings: Settings) -> None:
    raw_topic = app.topic(
        settings.topic(RAW),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    by_person = settings.topic(BY_PERSON)
    dead_letters = settings.topic(DLQ)
    accepted = LabelCache(EVENTS_ACCEPTED)
    rejected = LabelCache(EVENTS_REJECTED)

    async def ingest(stream: StreamT[Any]) -> None:
        batches = cast("Stream[bytes]", stream).take_events(
            settings.ingest_batch_size, within=settings.ingest_batch_seconds
        )
        async for events in batches:
            started = time.perf_counter()
            # Produce the whole batch through the driver's producer, then wait for the broker
            # to acknowledge all of it before the batch is acknowledged (and its offsets may
            # be committed): at-least-once, without Faust's per-message send machinery.
            deliveries = [await _ingest_one(event) for event in events]
            await asyncio.gather(*deliveries)
            INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _ingest_one(event: EventT[Any]) -> Awaitable[Any]:
        message = event.message
        raw = message.value if isinstance(message.value, bytes) else b""
        received_at = datetime.fromtimestamp(message.timestamp, UTC)
        result = decode_touchpoint(raw, received_at)
        if isinstance(result, TouchpointEvent):
            accepted.get(result.channel.value).inc()
            return await app.producer.send(
                by_person, result.person_key().encode(), result.to_json(), None, None, None
            )
        rejected.get(result.channel, result.reason.value).inc()
        headers = dead_letter_headers(
            result, message.topic, message.partition, message.offset, datetime.now(UTC)
        )
        return await app.producer.send(
            dead_letters,
            message.key if isinstance(message.key, bytes) else None,
            redact(raw),
            None,
            None,
            [(name, value.encode()) for name, value in headers.items()],
        )

    app.agent(raw_topic, name="ingest")(ingest)
