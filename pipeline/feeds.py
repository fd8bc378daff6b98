"""Mapping contact-centre and store exports (and touchpoints in the event contract) to
touchpoint events.

Each export row becomes one event, or a :class:`RowError` that names the column and the
problem. Event ids are derived from the row's content, so importing the same file twice
produces the same events (deduplicated downstream on ``event_id``). The mapping is documented
in docs/feeds.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from pipeline.pii import hash_email, hash_phone

Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RowError:
    column: str
    problem: str

    def __str__(self) -> str:
        return f"{self.column}: {self.problem}" if self.column else self.problem


class _Bad(Exception):
    def __init__(self, column: str, problem: str) -> None:
        super().__init__(problem)
        self.error = RowError(column, problem)


def _text(row: Row, column: str, required: bool = True) -> str | None:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _Bad(column, "is required")
        return None
    return str(value).strip()


def _time(row: Row, column: str) -> datetime:
    raw = _text(row, column)
    assert raw is not None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _Bad(column, f"{raw!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise _Bad(column, f"{raw!r} has no time zone (add Z or +01:00)")
    return value.astimezone(UTC)


def _number(row: Row, column: str, kind: Callable[[str], Any] = int) -> Any:
    raw = _text(row, column, required=False)
    if raw is None:
        return None
    try:
        return kind(raw)
    except (ValueError, InvalidOperation):
        raise _Bad(column, f"{raw!r} is not a number") from None


def _event_id(feed: str, *parts: object) -> str:
    digest = hashlib.blake2b("|".join(map(str, (feed, *parts))).encode(), digest_size=16)
    return f"{feed}-{digest.hexdigest()}"


def _identity(row: Row, key: bytes, country_code: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    for column in ("customer_id", "loyalty_id"):
        value = _text(row, column, required=False)
        if value:
            ids[column] = value
    email = _text(row, "email", required=False)
    if email:
        ids["email_hash"] = hash_email(email, key)
    phone = _text(row, "phone", required=False)
    if phone:
        ids["phone_hash"] = hash_phone(phone, key, country_code)
    if not ids:
        raise _Bad("", "no identifier: give customer_id, loyalty_id, email or phone")
    return ids


def _identity_of_call(
    row: Row, call_id: str, key: bytes, country_code: str, known: dict[str, dict[str, str]] | None
) -> dict[str, str]:
    try:
        ids = _identity(row, key, country_code)
    except _Bad:
        if known is not None and call_id in known:
            return known[call_id]
        raise
    if known is not None:
        known[call_id] = ids
    return ids


# Contact-centre call legs: event → (touchpoint, action, outcome, outcome_reason)
CALL_EVENTS: Final[dict[str, tuple[str, str, str, str | None]]] = {
    "ivr": ("ivr.menu", "select", "ok", None),
    "queued": ("queue.wait", "wait", "ok", None),
    "answered": ("agent.talk", "talk", "ok", None),
    "transferred": ("agent.talk", "transfer", "ok", None),
    "abandoned": ("queue.wait", "wait", "abandoned", "caller_hung_up"),
    "ended": ("agent.talk", "end", "ok", None),
    "wrap_up": ("call.wrap_up", "wrap_up", "ok", None),
    "csat": ("survey.csat", "answer", "ok", None),
}
RESOLVED_WRAP_UP_CODES: Final = frozenset({"resolved", "fixed", "answered_question"})

# Store export: event → (touchpoint, action)
STORE_EVENTS: Final[dict[str, tuple[str, str]]] = {
    "visit": ("store.visit", "enter"),
    "queue": ("till.queue", "wait"),
    "purchase": ("till.purchase", "pay"),
    "return": ("till.return", "return"),
    "pickup": ("pickup.collected", "collect"),
    "complaint": ("store.complaint", "complain"),
}


def map_call_leg(
    row: Row, pii_key: bytes, country_code: str = "", known: dict[str, dict[str, str]] | None = None
) -> dict[str, Any] | RowError:
    """One contact-centre call leg (columns: call_id, event, timestamp, customer_id/phone, …).

    Exports often name the caller on the first leg only: with ``known`` (call id → the
    identifiers seen earlier in the same import), later legs inherit them.
    """
    try:
        call_id = _text(row, "call_id")
        assert call_id is not None
        kind = (_text(row, "event") or "").lower()
        if kind not in CALL_EVENTS:
            raise _Bad("event", f"{kind!r} is not one of {', '.join(CALL_EVENTS)}")
        at = _time(row, "timestamp")
        touchpoint, action, outcome, reason = CALL_EVENTS[kind]
        wrap_up = _text(row, "wrap_up_code", required=False)
        if kind == "ended" and wrap_up and wrap_up.lower() in RESOLVED_WRAP_UP_CODES:
            action = "resolve"
        event: dict[str, Any] = {
            "event_id": _event_id("cc", call_id, kind, at.isoformat()),
            "occurred_at": at.isoformat(),
            "channel": "call_center",
            "touchpoint": touchpoint,
            "action": action,
            "outcome": outcome,
            "session_hint": call_id,
            "source": "import:contact_center",
            **_identity_of_call(row, call_id, pii_key, country_code, known),
        }
        if reason:
            event["outcome_reason"] = reason
        wait = _number(row, "wait_seconds", float)
        if wait is not None:
            event["wait_ms"] = int(wait * 1000)
        csat = _number(row, "csat")
        if csat is not None:
            event["csat"] = csat
        attributes = {
            name: value
            for name in ("queue", "agent_id", "issue")
            if (value := _text(row, name, required=False))
        }
        if wrap_up:
            attributes["wrap_up_code"] = wrap_up
        if attributes:
            event["attributes"] = attributes
        return event
    except _Bad as bad:
        return bad.error


def map_store_row(
    row: Row, pii_key: bytes, country_code: str = "", known: dict[str, dict[str, str]] | None = None
) -> dict[str, Any] | RowError:
    """One store export row (columns: visit_id, store_id, event, timestamp, loyalty_id, …)."""
    try:
        visit_id = _text(row, "visit_id")
        kind = (_text(row, "event") or "").lower()
        if kind not in STORE_EVENTS:
            raise _Bad("event", f"{kind!r} is not one of {', '.join(STORE_EVENTS)}")
        at = _time(row, "timestamp")
        touchpoint, action = STORE_EVENTS[kind]
        event: dict[str, Any] = {
            "event_id": _event_id(
                "store", visit_id, kind, at.isoformat(), row.get("receipt_id", "")
            ),
            "occurred_at": at.isoformat(),
            "channel": "store",
            "touchpoint": touchpoint,
            "action": action,
            "session_hint": visit_id,
            "source": "import:store",
            **_identity_of_call(row, visit_id or "", pii_key, country_code, known),
        }
        amount = _number(row, "amount", Decimal)
        if amount is not None:
            currency = _text(row, "currency")
            event["revenue"] = str(-abs(amount) if kind == "return" else amount)
            event["currency"] = currency
        queue = _number(row, "queue_seconds", float)
        if queue is not None:
            event["wait_ms"] = int(queue * 1000)
        store_id = _text(row, "store_id", required=False)
        if store_id:
            event["attributes"] = {"store_id": store_id}
        return event
    except _Bad as bad:
        return bad.error


def map_touchpoint(
    row: Row, pii_key: bytes, country_code: str = "", known: dict[str, dict[str, str]] | None = None
) -> dict[str, Any] | RowError:
    """One touchpoint in journeywatch's own event contract (docs/event-contract.md), as the
    collector takes it: ``email`` and ``phone`` are hashed here and never stored raw; the
    contract's validation follows. ``source`` defaults to ``import``."""
    event = dict(row)
    try:
        email = event.pop("email", None)
        if email is not None:
            if not isinstance(email, str) or "@" not in email:
                raise _Bad("email", "must be an e-mail address")
            event["email_hash"] = hash_email(email, pii_key)
        phone = event.pop("phone", None)
        if phone is not None:
            if not isinstance(phone, str) or sum(ch.isdigit() for ch in phone) < 6:
                raise _Bad("phone", "must be a phone number")
            event["phone_hash"] = hash_phone(phone, pii_key, country_code)
    except _Bad as bad:
        return bad.error
    event.pop("received_at", None)  # when journeywatch received it: now, not the export's
    event.setdefault("source", "import")
    return event


Mapper = Callable[[Row, bytes, str, dict[str, dict[str, str]] | None], dict[str, Any] | RowError]
FEEDS: Final[dict[str, Mapper]] = {
    "contact-center": map_call_leg,
    "store": map_store_row,
    "touchpoints": map_touchpoint,
}
