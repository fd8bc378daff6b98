"""The dead-letter record: original (PII-redacted) bytes as the value, the reason in headers.

This follows the Kafka Connect convention, so any Kafka tool can read and replay it. Two
topics carry them: ``touchpoints.dlq`` (events refused at ingest: ``dead_letter_headers``) and
``journeys.dlq`` (records the journey agent could not apply: ``failure_headers``).
"""

from __future__ import annotations

import traceback
from datetime import datetime
from typing import Final, NamedTuple

from pipeline.contract import Rejection
from pipeline.pii import redact_text

REASON: Final = "jw.error.reason"
FIELD: Final = "jw.error.field"
DETAIL: Final = "jw.error.detail"
CHANNEL: Final = "jw.channel"
SOURCE: Final = "jw.source"
ORIGINAL_TOPIC: Final = "jw.original.topic"
ORIGINAL_PARTITION: Final = "jw.original.partition"
ORIGINAL_OFFSET: Final = "jw.original.offset"
FAILED_AT: Final = "jw.failed_at"
STACK: Final = "jw.error.stack"  # journeys.dlq: where it raised, innermost frames last
KIND: Final = "jw.error.kind"  # journeys.dlq: touchpoint, handoff or state

STACK_FRAMES: Final = 6


def dead_letter_headers(
    rejection: Rejection, topic: str, partition: int, offset: int, failed_at: datetime
) -> dict[str, str]:
    # The field and the detail may name an attribute or quote a value, the source is the
    # producer's: redacted like the value (``pii.redact``), before they are kept.
    return {
        REASON: rejection.reason.value,
        FIELD: redact_text(rejection.field),
        DETAIL: redact_text(rejection.detail[:1024]),
        CHANNEL: rejection.channel,
        SOURCE: redact_text(rejection.source),
        **_position(topic, partition, offset, failed_at),
    }


class Failure(NamedTuple):
    """What a dead letter keeps of an exception: its type's name, its message (truncated) and
    the short stack summary. Kept instead of the exception, whose ``__traceback__`` holds every
    frame it went through alive, and with them whatever they referenced (a whole partition's
    engine, a batch)."""

    reason: str
    detail: str
    stack: str


def failure_of(error: BaseException) -> Failure:
    """The ``Failure`` of ``error`` (nothing of it, or of its frames, is kept)."""
    return Failure(type(error).__name__, str(error)[:1024], stack_summary(error))


def failure_headers(
    kind: str,
    failure: Failure,
    topic: str,
    partition: int,
    offset: int,
    failed_at: datetime,
) -> dict[str, str]:
    """Headers of a record the journey agent could not apply (``journeys.dlq``): the reason is
    the exception's type, the detail its message, the stack a short summary of where it raised.
    ``offset`` is -1 for a record that has no position of its own (a state record, a touchpoint
    carried inside a hand-off message)."""
    return {
        REASON: failure.reason,
        DETAIL: failure.detail,
        KIND: kind,
        STACK: failure.stack,
        **_position(topic, partition, offset, failed_at),
    }


def stack_summary(error: BaseException, frames: int = STACK_FRAMES) -> str:
    """The innermost ``frames`` frames of where ``error`` was raised: ``file:line function``,
    separated by `` < `` (innermost first), short enough for a header and a table column."""
    summary = traceback.extract_tb(error.__traceback__)[-frames:]
    return " < ".join(
        f"{'/'.join(frame.filename.rsplit('/', 2)[-2:])}:{frame.lineno} {frame.name}"
        for frame in reversed(summary)
    )[:1024]


def _position(topic: str, partition: int, offset: int, failed_at: datetime) -> dict[str, str]:
    return {
        ORIGINAL_TOPIC: topic,
        ORIGINAL_PARTITION: str(partition),
        ORIGINAL_OFFSET: str(offset),
        FAILED_AT: failed_at.isoformat(),
    }
