"""Rows of ``action_failures`` (migration 0013): the actions agent's dead letters.

Each ``actions.dlq`` record is a JSON object (streams/actions.py): the rule, the trigger's
idempotency key, output id and person, why it was undeliverable (``http_<status>`` or
``retries_exhausted``), the last status, the tries, the receiver's answer (cut), the webhook's
URL without query or credentials, and the trigger output itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

ACTION_FAILURE_COLUMNS: tuple[str, ...] = (
    "failed_at",
    "rule",
    "reason",
    "status",
    "attempts",
    "idempotency_key",
    "output_id",
    "person_id",
    "url",
    "answer",
    "trigger",
    "kafka_topic",
    "kafka_topic_id",
    "kafka_partition",
    "kafka_offset",
)


def _time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


def action_failure_row(
    raw: bytes, topic: str, topic_id: str, partition: int, offset: int
) -> list[Any]:
    """One ``action_failures`` row from an ``actions.dlq`` record (an unreadable record is kept
    with reason ``unreadable`` and its bytes as the trigger)."""
    try:
        letter = orjson.loads(raw)
    except orjson.JSONDecodeError:
        letter = None
    if not isinstance(letter, dict):
        letter = {"reason": "unreadable", "trigger": raw.decode("utf-8", errors="replace")}
    status = letter.get("status")
    trigger = letter.get("trigger")
    return [
        _time(letter.get("failed_at")),
        str(letter.get("rule") or ""),
        str(letter.get("reason") or "unknown"),
        int(status) if isinstance(status, int) else 0,
        int(letter.get("attempts") or 0),
        str(letter.get("idempotency_key") or ""),
        str(letter.get("output_id") or ""),
        str(letter.get("person_id") or ""),
        str(letter.get("url") or ""),
        str(letter.get("answer") or ""),
        trigger if isinstance(trigger, str) else orjson.dumps(trigger).decode(),
        topic,
        topic_id,
        partition,
        offset,
    ]
