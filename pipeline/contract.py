"""The touchpoint event contract, version 1.

Raw bytes become a typed, frozen :class:`TouchpointEvent` exactly once, here, at the edge
(``decode_touchpoint``). Everything downstream trusts the result. Anything that does not fit
becomes a :class:`Rejection` with a machine-readable reason, the offending field and a
human-readable detail: bad input is data, never an exception that escapes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Final

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Final = 1
MAX_EVENT_BYTES: Final = 64 * 1024
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)
MAX_ATTRIBUTES: Final = 64
# orjson reads an integer literal beyond 64 bits as a float (10**30 becomes 1e+30), so a float
# this large may be an integer that lost its digits: refused, with "send it as a string".
# Integers up to 64 bits are read, kept and written exactly.
MAX_EXACT_FLOAT: Final = float(2**63)
INT_RANGE: Final = (-(2**63), 2**64 - 1)


class Channel(enum.StrEnum):
    """Where a touchpoint happened. The first four are the core channels."""

    WEB = "web"
    APP = "app"
    CALL_CENTER = "call_center"
    STORE = "store"
    CHAT = "chat"
    EMAIL = "email"
    SOCIAL = "social"


class OutcomeStatus(enum.StrEnum):
    """What came of a touchpoint."""

    OK = "ok"
    ERROR = "error"
    ABANDONED = "abandoned"


class RejectReason(enum.StrEnum):
    """Why an event was refused. A closed set, so it is safe as a metric label."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_FIELD = "invalid_field"
    MISSING_IDENTIFIER = "missing_identifier"
    FUTURE_EVENT = "future_event"
    TOO_OLD = "too_old"
    UNSUPPORTED_VERSION = "unsupported_version"


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
HashHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
TouchpointName = Annotated[
    str,
    StringConstraints(max_length=128, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"),
]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
AttributeValue = str | int | float | bool | None

IDENTIFIER_FIELDS: Final = (
    "customer_id",
    "loyalty_id",
    "email_hash",
    "phone_hash",
    "device_id",
    "anonymous_id",
)


class TouchpointEvent(BaseModel):
    """One contact between a customer and the business. Frozen: validated once, then trusted."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_max_length=4096)

    schema_version: int = SCHEMA_VERSION
    event_id: Identifier
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    channel: Channel
    touchpoint: TouchpointName
    action: Slug
    outcome: OutcomeStatus = OutcomeStatus.OK
    outcome_reason: Slug | None = None

    anonymous_id: Identifier | None = None
    device_id: Identifier | None = None
    customer_id: Identifier | None = None
    email_hash: HashHex | None = None
    phone_hash: HashHex | None = None
    loyalty_id: Identifier | None = None

    session_hint: Identifier | None = None
    duration_ms: Annotated[int, Field(ge=0, le=7 * 24 * 3600 * 1000)] | None = None
    wait_ms: Annotated[int, Field(ge=0, le=7 * 24 * 3600 * 1000)] | None = None
    csat: Annotated[int, Field(ge=1, le=5)] | None = None
    nps: Annotated[int, Field(ge=0, le=10)] | None = None
    sentiment: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    revenue: Annotated[Decimal, Field(max_digits=18, decimal_places=4)] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    source: Annotated[str, StringConstraints(max_length=64)] | None = None
    attributes: dict[Annotated[str, StringConstraints(max_length=64)], Any] = Field(
        default_factory=dict
    )

    @field_validator("occurred_at", "received_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported (this build reads 1)")
        return value

    @field_validator("attributes")
    @classmethod
    def _bounded_attributes(cls, value: dict[str, Any]) -> dict[str, AttributeValue]:
        if len(value) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes are allowed, got {len(value)}")
        for key, item in value.items():
            if not isinstance(item, str | int | float | bool | None):
                raise ValueError(
                    f"attribute {key!r} must be a string, number, boolean or null, "
                    f"not {type(item).__name__}"
                )
            if (isinstance(item, float) and abs(item) >= MAX_EXACT_FLOAT) or (
                isinstance(item, int)
                and not isinstance(item, bool)
                and not INT_RANGE[0] <= item <= INT_RANGE[1]
            ):
                raise ValueError(
                    f"attribute {key!r} is a number beyond 64 bits, which cannot be kept "
                    "exactly: send it as a string"
                )
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> TouchpointEvent:
        if not any(getattr(self, name) for name in IDENTIFIER_FIELDS):
            raise ValueError("at least one identifier is required: " + ", ".join(IDENTIFIER_FIELDS))
        if self.revenue is not None and self.currency is None:
            raise ValueError("currency is required when revenue is given")
        if self.occurred_at > self.received_at + MAX_FUTURE_SKEW:
            raise ValueError(
                f"occurred_at {self.occurred_at.isoformat()} is more than "
                f"{int(MAX_FUTURE_SKEW.total_seconds())} s after received_at "
                f"{self.received_at.isoformat()}"
            )
        return self

    def person_key(self) -> str:
        """The strongest identifier this event carries, as ``kind:value``.

        Used to key the event before identity stitching has resolved the person.
        """
        for name in IDENTIFIER_FIELDS:
            value = getattr(self, name)
            if value:
                return f"{name}:{value}"
        raise AssertionError("validated events always carry an identifier")  # pragma: no cover

    def to_json(self) -> bytes:
        """Canonical JSON encoding, the form written to topics downstream of ingest."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why some bytes are not a valid touchpoint event."""

    reason: RejectReason
    field: str
    detail: str
    channel: str = "unknown"
    source: str = ""

    def describe(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.reason.value}{where}: {self.detail}"


_ERROR_REASONS: Final = {
    "missing": RejectReason.MISSING_FIELD,
    "extra_forbidden": RejectReason.UNKNOWN_FIELD,
}
_KNOWN_CHANNELS: Final = frozenset(c.value for c in Channel)


def _rejection_from(error: ValidationError, channel: str) -> Rejection:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"])
    if not field:  # a model-level rule
        if message.startswith("Value error, at least one identifier"):
            return Rejection(RejectReason.MISSING_IDENTIFIER, "", message[13:], channel)
        if "after received_at" in message:
            return Rejection(RejectReason.FUTURE_EVENT, "occurred_at", message[13:], channel)
        return Rejection(
            RejectReason.INVALID_FIELD, "", message.removeprefix("Value error, "), channel
        )
    if field == "schema_version" and first["type"] == "value_error":
        return Rejection(RejectReason.UNSUPPORTED_VERSION, field, message[13:], channel)
    reason = _ERROR_REASONS.get(first["type"], RejectReason.INVALID_FIELD)
    return Rejection(reason, field, message.removeprefix("Value error, "), channel)


def decode_touchpoint(
    raw: bytes, received_at: datetime, max_age: timedelta | None = None
) -> TouchpointEvent | Rejection:
    """Validate raw bytes into an event, or say precisely why not.

    ``received_at`` is when the platform received the bytes (the collector's clock or the
    Kafka record time); it is used when the event does not carry its own ``received_at``.
    ``max_age``: an event that occurred longer than this before ``received_at`` is refused
    (``too_old``): the storage's retention would delete it at once.
    """
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(
            RejectReason.TOO_LARGE, "", f"event is {len(raw)} bytes, the limit is {MAX_EVENT_BYTES}"
        )
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(RejectReason.NOT_JSON, "", f"not valid JSON: {exc}")
    if not isinstance(data, dict):
        return Rejection(
            RejectReason.NOT_AN_OBJECT, "", f"expected a JSON object, got {type(data).__name__}"
        )
    return validate_touchpoint(data, received_at, max_age)


def validate_touchpoint(
    data: dict[str, Any], received_at: datetime, max_age: timedelta | None = None
) -> TouchpointEvent | Rejection:
    """Validate an already parsed JSON object (``data`` may be modified).

    ``max_age`` as in :func:`decode_touchpoint`: measured from the platform's ``received_at``
    (the clock the storage's time-to-live runs on), not from one the event carries.
    """
    channel = data.get("channel")
    channel_label = (
        channel if isinstance(channel, str) and channel in _KNOWN_CHANNELS else "unknown"
    )
    if "received_at" not in data:
        data["received_at"] = received_at
    try:
        event = TouchpointEvent.model_validate(data)
    except ValidationError as exc:
        rejection = _rejection_from(exc, channel_label)
        source = data.get("source")
        if isinstance(source, str):
            return replace(rejection, source=source[:64])
        return rejection
    if max_age is not None and event.occurred_at < received_at - max_age:
        return Rejection(
            RejectReason.TOO_OLD,
            "occurred_at",
            f"occurred_at {event.occurred_at.isoformat()} is more than "
            f"{_describe_age(max_age)} before {received_at.astimezone(UTC).isoformat()}: "
            "older than touchpoints are kept (JW_TOUCHPOINT_RETENTION_DAYS), so it would be "
            "deleted as soon as it was stored",
            channel_label,
            (event.source or "")[:64],
        )
    return event


def _describe_age(age: timedelta) -> str:
    if age.total_seconds() % 86_400 == 0:
        days = int(age.total_seconds() // 86_400)
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{age.total_seconds():g} s"


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of the contract, as published in docs/."""
    schema = TouchpointEvent.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://journeywatch.dev/schemas/touchpoint-event-v1.json"
    schema["title"] = "TouchpointEvent v1"
    return schema
