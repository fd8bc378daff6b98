"""The ingest agent: raw bytes in, validated events or dead letters out.

Validation happens here, once. Valid events go to ``touchpoints.by_person`` keyed by the
person's strongest identifier; everything else goes to ``touchpoints.dlq`` with the reason.
Offsets of ``touchpoints.raw`` are committed by Faust only after the produced records are
flushed (at-least-once).
"""

from __future__ import annotations

import time
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
    by_person = app.topic(settings.topic(BY_PERSON), key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.topic(DLQ), key_serializer="raw", value_serializer="raw")
    accepted = LabelCache(EVENTS_ACCEPTED)
    rejected = LabelCache(EVENTS_REJECTED)

    async def ingest(stream: StreamT[Any]) -> None:
        batches = cast("Stream[bytes]", stream).take_events(
            settings.ingest_batch_size, within=settings.ingest_batch_seconds
        )
        async for events in batches:
            started = time.perf_counter()
            for event in events:
                await _ingest_one(event)
            INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _ingest_one(event: EventT[Any]) -> None:
        message = event.message
        raw = message.value if isinstance(message.value, bytes) else b""
        received_at = datetime.fromtimestamp(message.timestamp, UTC)
        result = decode_touchpoint(raw, received_at)
        if isinstance(result, TouchpointEvent):
            await by_person.send(key=result.person_key().encode(), value=result.to_json())
            accepted.get(result.channel.value).inc()
            return
        headers = dead_letter_headers(
            result, message.topic, message.partition, message.offset, datetime.now(UTC)
        )
        await dead_letters.send(
            key=message.key,
            value=redact(raw),
            headers=[(name, value.encode()) for name, value in headers.items()],
        )
        rejected.get(result.channel, result.reason.value).inc()

    app.agent(raw_topic, name="ingest")(ingest)
