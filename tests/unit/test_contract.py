from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract import (
    MAX_EVENT_BYTES,
    Channel,
    Rejection,
    RejectReason,
    TouchpointEvent,
    decode_touchpoint,
)

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "occurred_at": "2026-11-23T09:59:00Z",
        "channel": "web",
        "touchpoint": "checkout.payment",
        "action": "submit",
        "customer_id": "c-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def decode(data: Any) -> TouchpointEvent | Rejection:
    return decode_touchpoint(orjson.dumps(data), NOW)


def test_a_valid_event_is_typed_frozen_and_utc() -> None:
    result = decode(
        event(occurred_at="2026-11-23T11:59:00+02:00", csat=2, revenue="19.90", currency="EUR")
    )
    assert isinstance(result, TouchpointEvent)
    assert result.occurred_at == datetime(2026, 11, 23, 9, 59, tzinfo=UTC)
    assert result.occurred_at.utcoffset() == timedelta(0)
    assert result.received_at == NOW  # taken from the transport when the event has none
    assert result.channel is Channel.WEB
    assert str(result.revenue) == "19.90"
    with pytest.raises(Exception, match="frozen"):
        result.csat = 5  # type: ignore[misc]


def test_received_at_in_the_event_wins_over_the_transport_time() -> None:
    result = decode(event(received_at="2026-11-23T09:59:30Z"))
    assert isinstance(result, TouchpointEvent)
    assert result.received_at == datetime(2026, 11, 23, 9, 59, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"not json", RejectReason.NOT_JSON, ""),
        (b"[1, 2]", RejectReason.NOT_AN_OBJECT, ""),
        (orjson.dumps(event(event_id=None)), RejectReason.MISSING_FIELD, "event_id"),
        (
            orjson.dumps(event(occurred_at="2026-11-23T09:59:00")),
            RejectReason.INVALID_FIELD,
            "occurred_at",
        ),
        (orjson.dumps(event(channel="fax")), RejectReason.INVALID_FIELD, "channel"),
        (
            orjson.dumps(event(touchpoint="Checkout Payment")),
            RejectReason.INVALID_FIELD,
            "touchpoint",
        ),
        (orjson.dumps(event(csat=6)), RejectReason.INVALID_FIELD, "csat"),
        (orjson.dumps(event(nps=-1)), RejectReason.INVALID_FIELD, "nps"),
        (orjson.dumps(event(customer_id=12345)), RejectReason.INVALID_FIELD, "customer_id"),
        (orjson.dumps(event(coupon="X")), RejectReason.UNKNOWN_FIELD, "coupon"),
        (orjson.dumps(event(customer_id=None)), RejectReason.MISSING_IDENTIFIER, ""),
        (
            orjson.dumps(event(email_hash="jane@example.com", customer_id=None)),
            RejectReason.INVALID_FIELD,
            "email_hash",
        ),
        (
            orjson.dumps(event(occurred_at="2026-11-23T10:05:01Z")),
            RejectReason.FUTURE_EVENT,
            "occurred_at",
        ),
        (orjson.dumps(event(schema_version=2)), RejectReason.UNSUPPORTED_VERSION, "schema_version"),
        (orjson.dumps(event(revenue="10")), RejectReason.INVALID_FIELD, ""),
        (orjson.dumps(event(attributes={"k": [1]})), RejectReason.INVALID_FIELD, "attributes"),
    ],
)
def test_bad_input_is_rejected_with_reason_and_field(
    raw: bytes, reason: RejectReason, field: str
) -> None:
    result = decode_touchpoint(raw, NOW)
    assert isinstance(result, Rejection), result
    assert result.reason is reason
    assert result.field == field
    assert result.detail
    assert reason.value in result.describe()


def test_an_event_over_64_kib_is_rejected_before_parsing() -> None:
    raw = orjson.dumps(event(attributes={"blob": "x" * MAX_EVENT_BYTES}))
    result = decode_touchpoint(raw, NOW)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.TOO_LARGE
    assert str(len(raw)) in result.detail


def test_five_minutes_in_the_future_is_the_limit() -> None:
    assert isinstance(decode(event(occurred_at="2026-11-23T10:05:00Z")), TouchpointEvent)
    assert isinstance(decode(event(occurred_at="2026-11-23T10:05:00.001Z")), Rejection)


def test_rejections_keep_the_channel_and_source_when_known() -> None:
    result = decode(event(csat=9, channel="app", source="sdk-ios"))
    assert isinstance(result, Rejection)
    assert (result.channel, result.source) == ("app", "sdk-ios")
    unknown = decode(event(channel="fax"))
    assert isinstance(unknown, Rejection) and unknown.channel == "unknown"


def test_person_key_prefers_the_strongest_identifier() -> None:
    both = decode(event(device_id="d-1", loyalty_id="L-1"))
    assert isinstance(both, TouchpointEvent) and both.person_key() == "customer_id:c-1"
    anonymous = decode(event(customer_id=None, anonymous_id="a-1", device_id="d-1"))
    assert isinstance(anonymous, TouchpointEvent) and anonymous.person_key() == "device_id:d-1"


identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(
    channel=st.sampled_from(list(Channel)),
    seconds_before=st.integers(min_value=-300, max_value=10**7),
    offset_hours=st.integers(min_value=-12, max_value=14),
    csat=st.none() | st.integers(1, 5),
    nps=st.none() | st.integers(0, 10),
    sentiment=st.none() | st.floats(-1, 1, allow_nan=False),
    customer=st.none() | identifiers,
    device=identifiers,
    attributes=st.dictionaries(
        identifiers, st.none() | st.booleans() | st.integers(-1000, 1000) | identifiers, max_size=5
    ),
)
def test_valid_events_survive_the_canonical_encoding(
    channel: Channel,
    seconds_before: int,
    offset_hours: int,
    csat: int | None,
    nps: int | None,
    sentiment: float | None,
    customer: str | None,
    device: str,
    attributes: dict[str, Any],
) -> None:
    occurred = (NOW - timedelta(seconds=seconds_before)).astimezone(
        timezone(timedelta(hours=offset_hours))
    )
    data = event(
        channel=channel.value,
        occurred_at=occurred.isoformat(),
        csat=csat,
        nps=nps,
        sentiment=sentiment,
        customer_id=customer,
        device_id=device,
        attributes=attributes,
    )
    first = decode(data)
    assert isinstance(first, TouchpointEvent), first
    again = decode_touchpoint(first.to_json(), NOW + timedelta(days=1))
    assert again == first


def test_an_event_older_than_the_retention_is_too_old_and_the_bound_is_exact() -> None:
    max_age = timedelta(days=395)
    oldest = NOW - max_age
    kept = decode_touchpoint(orjson.dumps(event(occurred_at=oldest.isoformat())), NOW, max_age)
    assert isinstance(kept, TouchpointEvent)
    older = (oldest - timedelta(milliseconds=1)).isoformat()
    refused = decode_touchpoint(orjson.dumps(event(occurred_at=older, source="sdk")), NOW, max_age)
    assert isinstance(refused, Rejection), refused
    assert (refused.reason, refused.field) == (RejectReason.TOO_OLD, "occurred_at")
    assert "395 days" in refused.detail and "JW_TOUCHPOINT_RETENTION_DAYS" in refused.detail
    assert (refused.channel, refused.source) == ("web", "sdk")
    # 1970 too; and the bound is the platform's clock, not a received_at the event carries
    carried = event(occurred_at="1970-01-01T00:00:00Z", received_at="1970-01-01T00:00:01Z")
    result = decode_touchpoint(orjson.dumps(carried), NOW, max_age)
    assert isinstance(result, Rejection) and result.reason is RejectReason.TOO_OLD
    # without a bound (unit tests, tools) nothing is too old
    assert isinstance(decode(event(occurred_at="1970-01-01T00:00:00Z")), TouchpointEvent)


@pytest.mark.parametrize(
    "literal",
    [b"1000000000000000000000000000000", b"-9223372036854775809", b"1e19", b"-1.5e300"],
)
def test_a_number_a_double_cannot_hold_is_refused_not_rounded(literal: bytes) -> None:
    raw = orjson.dumps(event()).replace(b'"e-1"', b'"e-1","attributes":{"n":' + literal + b"}")
    result = decode_touchpoint(raw, NOW)
    assert isinstance(result, Rejection), result
    assert result.reason is RejectReason.INVALID_FIELD and result.field == "attributes"
    assert "'n'" in result.detail and "as a string" in result.detail


@given(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-9.2e18, max_value=9.2e18),
    )
)
def test_numbers_within_64_bits_are_kept_exactly(value: int | float) -> None:
    raw = orjson.dumps(event(attributes={"n": value}))
    result = decode_touchpoint(raw, NOW)
    assert isinstance(result, TouchpointEvent), result
    stored = orjson.loads(result.to_json())["attributes"]["n"]
    assert stored == value and type(stored) is type(value)
