"""Rows for ClickHouse tables, built from records already validated upstream.

Records downstream of ingest are trusted (validated once at the edge), so this module only
reshapes them: no validation, no pydantic on the sink's hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from pipeline import deadletter as dl

TOUCHPOINT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "occurred_at",
    "received_at",
    "channel",
    "touchpoint",
    "action",
    "outcome",
    "outcome_reason",
    "anonymous_id",
    "device_id",
    "customer_id",
    "email_hash",
    "phone_hash",
    "loyalty_id",
    "session_hint",
    "duration_ms",
    "wait_ms",
    "csat",
    "nps",
    "sentiment",
    "revenue",
    "currency",
    "source",
    "attributes",
    "schema_version",
    "kafka_topic",
    "kafka_topic_id",
    "kafka_partition",
    "kafka_offset",
)

FAILED_EVENT_COLUMNS: tuple[str, ...] = (
    "failed_at",
    "reason",
    "field",
    "detail",
    "channel",
    "source",
    "original_topic",
    "original_partition",
    "original_offset",
    "raw",
    "kafka_topic",
    "kafka_topic_id",
    "kafka_partition",
    "kafka_offset",
)

JOURNEY_ERROR_COLUMNS: tuple[str, ...] = (
    "failed_at",
    "kind",
    "reason",
    "detail",
    "stack",
    "original_topic",
    "original_partition",
    "original_offset",
    "original_key",
    "value",
    "kafka_topic",
    "kafka_topic_id",
    "kafka_partition",
    "kafka_offset",
)

OUTPUT_COLUMNS: tuple[str, ...] = (
    "output_id",
    "type",
    "name",
    "at",
    "person_id",
    "journey",
    "journey_id",
    "stage",
    "channel",
    "touchpoint",
    "event_id",
    "value",
    "detail",
    "kafka_topic",
    "kafka_topic_id",
    "kafka_partition",
    "kafka_offset",
)

_parse_time = datetime.fromisoformat


def output_row(
    output: Mapping[str, Any], topic: str, topic_id: str, partition: int, offset: int
) -> list[Any]:
    """One ``journey_events`` / ``experience_moments`` row from a journey agent output."""
    get = output.get
    value = get("value")
    return [
        output["output_id"],
        output["type"],
        output["name"],
        datetime.fromtimestamp(output["at"] / 1000, UTC),
        output["person_id"],
        get("journey") or "",
        get("journey_id") or "",
        get("stage") or "",
        get("channel") or "",
        get("touchpoint") or "",
        get("event_id") or "",
        float(value) if value is not None else None,
        orjson.dumps(get("detail") or {}).decode(),
        topic,
        topic_id,
        partition,
        offset,
    ]


def touchpoint_row(
    event: Mapping[str, Any], topic: str, topic_id: str, partition: int, offset: int
) -> list[Any]:
    """One ``touchpoints`` row from a validated event's canonical JSON form."""
    get = event.get
    revenue = get("revenue")
    attributes = get("attributes")
    return [
        event["event_id"],
        _parse_time(event["occurred_at"]),
        _parse_time(event["received_at"]),
        event["channel"],
        event["touchpoint"],
        event["action"],
        get("outcome", "ok"),
        get("outcome_reason") or "",
        get("anonymous_id") or "",
        get("device_id") or "",
        get("customer_id") or "",
        get("email_hash") or "",
        get("phone_hash") or "",
        get("loyalty_id") or "",
        get("session_hint") or "",
        get("duration_ms"),
        get("wait_ms"),
        get("csat"),
        get("nps"),
        get("sentiment"),
        Decimal(revenue) if revenue is not None else None,
        get("currency") or "",
        get("source") or "",
        orjson.dumps(attributes).decode() if attributes else "{}",
        get("schema_version", 1),
        topic,
        topic_id,
        partition,
        offset,
    ]


def failed_event_row(
    headers: Mapping[str, str], raw: bytes, topic: str, topic_id: str, partition: int, offset: int
) -> list[Any]:
    """One ``failed_events`` row from a dead-letter record (headers + redacted bytes)."""
    failed_at = headers.get(dl.FAILED_AT)
    return [
        _parse_time(failed_at) if failed_at else datetime.now(UTC),
        headers.get(dl.REASON, "unknown"),
        headers.get(dl.FIELD, ""),
        headers.get(dl.DETAIL, ""),
        headers.get(dl.CHANNEL, "unknown"),
        headers.get(dl.SOURCE, ""),
        headers.get(dl.ORIGINAL_TOPIC, ""),
        int(headers.get(dl.ORIGINAL_PARTITION, "0")),
        int(headers.get(dl.ORIGINAL_OFFSET, "0")),
        raw.decode("utf-8", errors="replace"),
        topic,
        topic_id,
        partition,
        offset,
    ]


def journey_error_row(
    headers: Mapping[str, str],
    key: bytes | None,
    raw: bytes,
    topic: str,
    topic_id: str,
    partition: int,
    offset: int,
) -> list[Any]:
    """One ``journey_errors`` row from a ``journeys.dlq`` record (headers + original bytes)."""
    failed_at = headers.get(dl.FAILED_AT)
    return [
        _parse_time(failed_at) if failed_at else datetime.now(UTC),
        headers.get(dl.KIND, "unknown"),
        headers.get(dl.REASON, "unknown"),
        headers.get(dl.DETAIL, ""),
        headers.get(dl.STACK, ""),
        headers.get(dl.ORIGINAL_TOPIC, ""),
        int(headers.get(dl.ORIGINAL_PARTITION, "0")),
        int(headers.get(dl.ORIGINAL_OFFSET, "-1")),
        (key or b"").decode("utf-8", errors="replace"),
        raw.decode("utf-8", errors="replace"),
        topic,
        topic_id,
        partition,
        offset,
    ]
