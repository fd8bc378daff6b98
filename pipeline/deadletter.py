"""The dead-letter record: original (PII-redacted) bytes as the value, the reason in headers.

This follows the Kafka Connect convention, so any Kafka tool can read and replay it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pipeline.contract import Rejection

REASON: Final = "jw.error.reason"
FIELD: Final = "jw.error.field"
DETAIL: Final = "jw.error.detail"
CHANNEL: Final = "jw.channel"
SOURCE: Final = "jw.source"
ORIGINAL_TOPIC: Final = "jw.original.topic"
ORIGINAL_PARTITION: Final = "jw.original.partition"
ORIGINAL_OFFSET: Final = "jw.original.offset"
FAILED_AT: Final = "jw.failed_at"


def dead_letter_headers(
    rejection: Rejection, topic: str, partition: int, offset: int, failed_at: datetime
) -> dict[str, str]:
    return {
        REASON: rejection.reason.value,
        FIELD: rejection.field,
        DETAIL: rejection.detail[:1024],
        CHANNEL: rejection.channel,
        SOURCE: rejection.source,
        ORIGINAL_TOPIC: topic,
        ORIGINAL_PARTITION: str(partition),
        ORIGINAL_OFFSET: str(offset),
        FAILED_AT: failed_at.isoformat(),
    }
