"""What the HTTP collector does to each submitted event before it may leave the collector.

Pure: parse the body, check the channel against the API key, replace raw e-mail addresses and
phone numbers by their keyed hashes, and those in free text (attributes, the session hint) as
``JW_FREE_TEXT_PII`` says, stamp ``received_at`` and ``source``, validate. The HTTP and Kafka
parts live in ``streams/collector.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from pipeline.contract import MAX_EVENT_BYTES, TouchpointEvent, validate_touchpoint
from pipeline.pii import REDACT, FreeTextScrubber, hash_email, hash_phone


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one event of a request was refused."""

    index: int
    reason: str
    field: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "reason": self.reason,
            "field": self.field,
            "detail": self.detail,
        }


class BodyError(ValueError):
    """The request body as a whole cannot be read."""


def parse_body(body: bytes, ndjson: bool) -> list[Any]:
    """The events of a request: one object, a JSON array, ``{"events": [...]}`` or NDJSON."""
    if ndjson:
        return _ndjson_items(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from exc
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("events"), list) and len(data) == 1:
        return list(data["events"])
    if isinstance(data, dict):
        return [data]
    raise BodyError('expected a JSON object, an array of objects, or {"events": [...]}')


def _ndjson_items(body: bytes) -> list[Any]:
    """One event per non-blank line; a bad line is named by its number in the body (orjson's
    own position counts from the start of that line)."""
    items = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise BodyError(
                f"line {number} of the body is not valid JSON: {exc.msg} at column {exc.colno}"
            ) from exc
    return items


def prepare_event(
    index: int,
    item: Any,
    *,
    source: str,
    allowed_channels: frozenset[str] | None,
    received_at: datetime,
    pii_key: bytes,
    phone_country_code: str = "",
    max_age: timedelta | None = None,
    free_text: FreeTextScrubber = REDACT,
) -> TouchpointEvent | ItemError:
    """One submitted event made safe and valid, or the reason it is refused (``max_age``: the
    oldest event accepted, ``Settings.touchpoint_max_age``; ``free_text``: what becomes of
    e-mail addresses and phone numbers in free text, ``JW_FREE_TEXT_PII``)."""
    if not isinstance(item, dict):
        return ItemError(index, "not_an_object", "", "each event must be a JSON object")
    channel = item.get("channel")
    # a list or an object is no channel (and unhashable): validation names the field
    if (
        allowed_channels is not None
        and not isinstance(channel, list | dict)
        and channel not in allowed_channels
    ):
        return ItemError(
            index,
            "channel_not_allowed",
            "channel",
            f"this API key may send {', '.join(sorted(allowed_channels))}, not {channel!r}",
        )
    email = item.pop("email", None)
    phone = item.pop("phone", None)
    if email is not None:
        if not isinstance(email, str) or "@" not in email:
            return ItemError(index, "invalid_field", "email", "must be an e-mail address")
        item["email_hash"] = hash_email(email, pii_key)
    if phone is not None:
        if not isinstance(phone, str) or sum(ch.isdigit() for ch in phone) < 6:
            return ItemError(index, "invalid_field", "phone", "must be a phone number")
        item["phone_hash"] = hash_phone(phone, pii_key, phone_country_code)
    free_text.event(item)
    item["received_at"] = received_at
    item["source"] = source
    size = len(orjson.dumps(item, default=str))
    if size > MAX_EVENT_BYTES:
        return ItemError(
            index, "too_large", "", f"event is {size} bytes, the limit is {MAX_EVENT_BYTES}"
        )
    result = validate_touchpoint(item, received_at, max_age)
    if isinstance(result, TouchpointEvent):
        return result
    return ItemError(index, result.reason.value, result.field, result.detail)
