"""The engine's view of a touchpoint: plain, compact, times in epoch milliseconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, NamedTuple

from pipeline.contract import IDENTIFIER_FIELDS, TouchpointEvent
from pipeline.segment_rules import SegmentRules

_new: Final = tuple.__new__


class Touch(NamedTuple):
    """A NamedTuple, not a frozen dataclass: construction is several times cheaper."""

    event_id: str
    at: int  # occurred_at, epoch milliseconds (event time)
    channel: str
    touchpoint: str
    action: str
    outcome: str = "ok"
    reason: str | None = None
    identifiers: tuple[tuple[str, str], ...] = ()  # (kind, value), strongest first
    session_hint: str | None = None
    duration_ms: int | None = None
    wait_ms: int | None = None
    csat: int | None = None
    nps: int | None = None
    sentiment: float | None = None
    revenue: float | None = None
    currency: str | None = None
    issue: str | None = None  # attributes.issue: what a contact is about (repeat contacts)
    # when the platform received it, epoch milliseconds (the collector's clock): a touch moves
    # its partition's watermark at most up to here, so a fast device clock cannot. Last, with a
    # default: hand-off messages carry touches as positional lists (pipeline/shard.py).
    received_at: int | None = None
    # the segment whose rule it matches (pipeline/segment_rules.py), decided where it enters the
    # workers and carried beside the touch in hand-off messages; a journey it starts is in it
    segment: str | None = None

    @classmethod
    def from_canonical(cls, data: dict[str, Any], segments: SegmentRules | None = None) -> Touch:
        """From the canonical JSON of an event validated already (``touchpoints.by_person``):
        no second validation, about ten times cheaper than ``from_event``. ``segments``: the
        journeys file's, which decide the touch's segment."""
        get = data.get
        identifiers = tuple((name, data[name]) for name in IDENTIFIER_FIELDS if get(name))
        attributes = get("attributes")
        issue = attributes.get("issue") if attributes else None
        revenue = get("revenue")
        fields = (
            data["event_id"],
            _millis(data["occurred_at"]),
            data["channel"],
            data["touchpoint"],
            data["action"],
            get("outcome", "ok"),
            get("outcome_reason"),
            identifiers,
            get("session_hint"),
            get("duration_ms"),
            get("wait_ms"),
            get("csat"),
            get("nps"),
            get("sentiment"),
            float(revenue) if revenue is not None else None,
            get("currency"),
            str(issue) if issue is not None else None,
            _millis(received) if (received := get("received_at")) else None,
            segments.segment_of(data["channel"], attributes) if segments else None,
        )
        return _new(cls, fields)  # every field given: NamedTuple's Python __new__ skipped

    @classmethod
    def from_event(cls, event: TouchpointEvent, segments: SegmentRules | None = None) -> Touch:
        identifiers = tuple(
            (name, value) for name in IDENTIFIER_FIELDS if (value := getattr(event, name))
        )
        issue = event.attributes.get("issue")
        return cls(
            event_id=event.event_id,
            at=int(event.occurred_at.timestamp() * 1000),
            channel=event.channel.value,
            touchpoint=event.touchpoint,
            action=event.action,
            outcome=event.outcome.value,
            reason=event.outcome_reason,
            identifiers=identifiers,
            session_hint=event.session_hint,
            duration_ms=event.duration_ms,
            wait_ms=event.wait_ms,
            csat=event.csat,
            nps=event.nps,
            sentiment=event.sentiment,
            revenue=float(event.revenue) if event.revenue is not None else None,
            currency=event.currency,
            issue=str(issue) if issue is not None else None,
            received_at=int(event.received_at.timestamp() * 1000),
            segment=segments.segment_of(event.channel.value, event.attributes)
            if segments
            else None,
        )


def _millis(text: str) -> int:
    """An ISO 8601 time of the canonical JSON as epoch milliseconds."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)
