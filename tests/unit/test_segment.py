"""The Segment API mapping (pipeline/segment.py): examples, and properties over arbitrary
Segment payloads."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.collect import BodyError, ItemError, prepare_event
from pipeline.contract import TouchpointEvent
from pipeline.pii import hash_email
from pipeline.segment import (
    MESSAGE_TYPES,
    SegmentRequest,
    channel_of,
    map_message,
    occurred_at,
    parse_segment_request,
    touchpoint_name,
)

KEY = b"unit-test-pii-key"
RECEIVED = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TOUCHPOINT = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def prepare(index: int, mapped: dict[str, Any]) -> TouchpointEvent | ItemError:
    return prepare_event(
        index,
        mapped,
        source="web-sdk",
        allowed_channels=None,
        received_at=RECEIVED,
        pii_key=KEY,
        max_age=timedelta(days=395),
    )


def mapped(message: dict[str, Any], sent_at: datetime | None = None) -> dict[str, Any]:
    result = map_message(0, message, SegmentRequest([message], sent_at=sent_at), RECEIVED)
    assert isinstance(result, dict), result
    return result


@pytest.mark.parametrize(
    ("name", "touchpoint"),
    [
        ("Checkout Payment Submitted", "checkout.payment_submitted"),
        ("Order Completed", "order.completed"),
        ("checkoutPaymentSubmitted", "checkout.payment_submitted"),
        ("app.launch", "app.launch"),
        ("Signed-Up", "signed.up"),
        ("Purchased", "purchased"),
        ("404 Not Found", "n404.not_found"),
        ("Café Visité", "cafe.visite"),
        ("!!!", ""),
        ("0:0", "n0.n0"),
    ],
)
def test_event_names_become_touchpoint_names(name: str, touchpoint: str) -> None:
    assert touchpoint_name(name) == touchpoint


def test_the_channel_comes_from_the_context() -> None:
    assert channel_of({"type": "track"}, {}) == "web"
    assert channel_of({"type": "screen"}, {}) == "app"
    assert channel_of({"type": "track"}, {"app": {"name": "Shop"}}) == "app"
    assert channel_of({"type": "track"}, {"device": {"type": "android"}}) == "app"
    assert channel_of({"type": "track"}, {"device": {"type": "desktop"}}) == "web"
    assert channel_of({"type": "track"}, {"library": {"name": "analytics-swift"}}) == "app"
    assert channel_of({"type": "track"}, {"library": {"name": "analytics.js"}}) == "web"


def test_the_timestamp_is_corrected_by_the_clock_skew() -> None:
    message = {"timestamp": "2026-12-07T09:59:00Z", "sentAt": "2026-12-07T10:00:00+00:00"}
    # the device's clock is two hours behind the collector's: one minute before sending
    assert occurred_at(message, None, RECEIVED) == RECEIVED - timedelta(minutes=1)
    batch_sent = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    assert occurred_at({"timestamp": "2026-12-07T09:59:00"}, batch_sent, RECEIVED) == (
        RECEIVED - timedelta(minutes=1)
    )  # a time without a zone is UTC; the batch's sentAt applies
    assert occurred_at({"timestamp": "2026-12-01T00:00:00Z"}, None, RECEIVED) == datetime(
        2026, 12, 1, tzinfo=UTC
    )  # no sentAt: taken as given (a historical import)
    assert occurred_at({}, None, RECEIVED) == RECEIVED
    error = occurred_at({"timestamp": "yesterday"}, None, RECEIVED)
    assert isinstance(error, ItemError) and error.field == "timestamp"


def test_identify_links_the_identifiers_and_hashes_the_traits() -> None:
    message = {
        "type": "identify",
        "userId": 1042,
        "anonymousId": "anon-1",
        "traits": {"email": "Jane@Example.com", "name": "Jane", "phone": ""},
        "context": {"device": {"id": "dev-9"}},
        "messageId": "m-1",
    }
    event = prepare(0, mapped(message))
    assert isinstance(event, TouchpointEvent)
    assert (event.touchpoint, event.action, event.event_id) == (
        "identity.identify",
        "identify",
        "m-1",
    )
    assert (event.customer_id, event.anonymous_id, event.device_id) == ("1042", "anon-1", "dev-9")
    assert event.email_hash == hash_email("jane@example.com", KEY)
    assert event.attributes == {} and "Jane" not in event.to_json().decode()


def test_identify_takes_the_traits_from_the_context_when_the_message_has_none() -> None:
    """As rudder-sdk-python sends an identify (its traits in context.traits only); traits
    at the top level win."""
    message = {
        "type": "identify",
        "userId": "c-1",
        "context": {"traits": {"email": "Jane@Example.com", "name": "Jane"}},
        "messageId": "m-1",
    }
    event = prepare(0, mapped(message))
    assert isinstance(event, TouchpointEvent)
    assert event.email_hash == hash_email("jane@example.com", KEY)
    both = message | {"traits": {"email": "Ann@Example.com"}}
    event = prepare(0, mapped(both))
    assert isinstance(event, TouchpointEvent)
    assert event.email_hash == hash_email("ann@example.com", KEY)
    bad = message | {"context": {"traits": {"email": 7}}}
    error = map_message(0, bad, SegmentRequest([bad]), RECEIVED)
    assert isinstance(error, ItemError) and error.field == "context.traits.email"


def test_alias_links_the_previous_id_to_the_customer() -> None:
    event = mapped({"type": "alias", "previousId": "anon-1", "userId": "c-1", "messageId": "m"})
    assert (event["customer_id"], event["anonymous_id"], event["touchpoint"]) == (
        "c-1",
        "anon-1",
        "identity.alias",
    )
    for message, field in (
        ({"type": "alias", "userId": "c-1"}, "previousId"),
        ({"type": "alias", "previousId": "a", "anonymousId": "a"}, "userId"),
    ):
        error = map_message(3, message, SegmentRequest([message]), RECEIVED)
        assert isinstance(error, ItemError) and (error.index, error.field) == (3, field)


def test_track_lifts_revenue_and_outcomes_and_bounds_the_attributes() -> None:
    properties: dict[str, Any] = {f"p{n}": n for n in range(100)}
    properties |= {"revenue": "12.345678", "outcome": "abandoned", "action": "Submit Now"}
    properties["x" * 80] = "y" * 5000
    event = prepare(
        0, mapped({"type": "track", "event": "Cart", "userId": "c", "properties": properties})
    )
    assert isinstance(event, TouchpointEvent)
    assert (str(event.revenue), event.currency, event.outcome.value, event.action) == (
        "12.3457",
        "USD",
        "abandoned",
        "track",  # "Submit Now" is no slug: it stays an attribute
    )
    assert len(event.attributes) == 64


def test_a_message_without_a_message_id_gets_the_same_id_on_a_retry() -> None:
    message = {
        "type": "page",
        "name": "Home",
        "anonymousId": "a",
        "timestamp": "2026-12-07T10:00:00Z",
    }
    first = mapped(dict(message, sentAt="2026-12-07T10:00:01Z"))
    again = mapped(dict(message, sentAt="2026-12-07T10:00:09Z"))
    assert first["event_id"] == again["event_id"] and first["event_id"].startswith("seg-")


def test_group_is_skipped_and_bad_messages_name_their_field() -> None:
    assert map_message(0, {"type": "group", "groupId": "g"}, SegmentRequest([]), RECEIVED) is None
    cases = [
        ({"type": "track", "userId": "c"}, "missing_field", "event"),
        ({"type": "track", "event": "X"}, "missing_identifier", ""),
        (
            {"type": "track", "event": "X", "userId": "c", "properties": []},
            "invalid_field",
            "properties",
        ),
        (
            {"type": "track", "event": "X", "userId": "c", "properties": {"revenue": "lots"}},
            "invalid_field",
            "properties.revenue",
        ),
        (
            {"type": "track", "event": "X", "userId": "c", "messageId": "m" * 200},
            "invalid_field",
            "messageId",
        ),
        ({"type": "track", "event": "X", "userId": "c", "sentAt": 5}, "invalid_field", "sentAt"),
        ({"type": "beacon", "userId": "c"}, "invalid_field", "type"),
        ("not an object", "not_an_object", ""),
    ]
    for message, reason, field in cases:
        error = map_message(7, message, SegmentRequest([message]), RECEIVED)
        assert isinstance(error, ItemError) and (error.index, error.reason, error.field) == (
            7,
            reason,
            field,
        )


def test_request_bodies() -> None:
    batch = parse_segment_request(
        b'{"batch": [{"type": "track"}], "sentAt": "2026-12-07T10:00:00Z", "writeKey": "k",'
        b' "context": {"app": {"name": "Shop"}}}',
        "batch",
    )
    assert (len(batch.messages), batch.write_key, batch.context) == (
        1,
        "k",
        {"app": {"name": "Shop"}},
    )
    single = parse_segment_request(b'{"event": "X", "userId": "c", "type": "page"}', "track")
    assert single.messages == [{"event": "X", "userId": "c", "type": "track"}]
    for body, words in (
        (b'{"batch": {}}', "batch"),
        (b"[]", "object"),
        (b"{", "JSON"),
        (b'{"batch": [], "sentAt": "soon"}', "sentAt"),
        (b'{"batch": [], "writeKey": 5}', "writeKey"),
        (b'{"batch": [], "context": 5}', "context"),
    ):
        with pytest.raises(BodyError, match=words):
            parse_segment_request(body, "batch")


# --- properties --------------------------------------------------------------------------

identifiers = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != ""),
    st.integers(min_value=0, max_value=2**53),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
# before any sentAt drawn (RECEIVED - 3 h at the earliest): a message is sent after it happened
times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 7, 9), timezones=st.just(UTC)
)


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(MESSAGE_TYPES))
    message: dict[str, Any] = {"type": kind}
    ids = draw(st.sampled_from(["user", "anonymous", "both"]))
    if ids in ("user", "both") or kind == "alias":
        message["userId"] = draw(identifiers)
    if ids in ("anonymous", "both"):
        message["anonymousId"] = draw(identifiers)
    if draw(st.booleans()):
        message["messageId"] = draw(
            st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "")
        )
    if draw(st.booleans()):
        message["timestamp"] = draw(times).isoformat()
    if draw(st.booleans()):
        message["sentAt"] = (
            RECEIVED - draw(st.timedeltas(timedelta(0), timedelta(hours=3)))
        ).isoformat()
    context: dict[str, Any] = {}
    if draw(st.booleans()):
        context["app"] = {"name": draw(st.text(max_size=10)), "version": "1.0"}
    if draw(st.booleans()):
        context["device"] = {
            "id": draw(identifiers),
            "type": draw(st.sampled_from(["ios", "android", "desktop"])),
        }
    if draw(st.booleans()):
        context["library"] = {
            "name": draw(st.sampled_from(["analytics.js", "analytics-ios", "analytics-python"]))
        }
    message["context"] = context
    properties = draw(st.dictionaries(st.text(max_size=80), json_values, max_size=80))
    if draw(st.booleans()):
        properties["revenue"] = draw(
            st.decimals(min_value=-(10**9), max_value=10**9, places=6).map(str)
        )
        if draw(st.booleans()):
            properties["currency"] = draw(st.sampled_from(["EUR", "usd", "GBP"]))
    if kind == "track":
        message["event"] = draw(
            st.from_regex(r"[A-Za-z][A-Za-z0-9 ._-]{0,40}", fullmatch=True)
        ) + draw(st.text(max_size=10))
        message["properties"] = properties
    elif kind in ("page", "screen"):
        if draw(st.booleans()):
            message["name"] = draw(st.text(max_size=30))
        if draw(st.booleans()):
            message["category"] = draw(st.text(max_size=30))
        message["properties"] = properties
    elif kind == "identify":
        traits: dict[str, Any] = {"name": draw(st.text(max_size=20))}
        if draw(st.booleans()):
            traits["email"] = draw(st.emails())
        if draw(st.booleans()):
            traits["phone"] = draw(st.from_regex(r"\+[1-9][0-9]{7,12}", fullmatch=True))
        message["traits"] = traits
    elif kind == "alias":
        message["previousId"] = draw(identifiers)
    elif kind == "group":
        message["groupId"] = draw(identifiers)
    return message


@given(
    valid_messages(),
    st.none() | st.timedeltas(timedelta(0), timedelta(hours=3)),
    st.booleans(),
)
def test_every_valid_message_maps_to_a_valid_touchpoint(
    message: dict[str, Any], batch_skew: timedelta | None, batch_app: bool
) -> None:
    """Through the whole path of a /v1/batch body: the batch's sentAt and context apply to a
    message without its own."""
    original = copy.deepcopy(message)
    body: dict[str, Any] = {"batch": [message]}
    if batch_skew is not None:
        body["sentAt"] = (RECEIVED - batch_skew).isoformat()
    if batch_app:
        body["context"] = {"app": {"name": "Shop"}}
    request = parse_segment_request(orjson.dumps(body), "batch")
    result = map_message(0, request.messages[0], request, RECEIVED)
    if message["type"] == "group":
        assert result is None
        return
    assert isinstance(result, dict), result
    event = prepare(0, result)
    assert isinstance(event, TouchpointEvent), event
    assert TOUCHPOINT.match(event.touchpoint) and event.channel.value in ("web", "app")
    if "messageId" in original:
        assert event.event_id == original["messageId"].strip()
    if message["type"] == "screen" or batch_app or original["context"].get("app"):
        assert event.channel.value == "app"
    sent = original.get("sentAt", body.get("sentAt"))
    if "timestamp" not in original:
        assert event.occurred_at == RECEIVED
    elif sent is None:
        assert event.occurred_at == datetime.fromisoformat(original["timestamp"])
    else:
        skew = RECEIVED - datetime.fromisoformat(sent)
        assert event.occurred_at == datetime.fromisoformat(original["timestamp"]) + skew
    if "userId" in original:
        assert event.customer_id == str(original["userId"]).strip()
    traits = original.get("traits", {})
    if "email" in traits:
        assert event.email_hash is not None and traits["email"] not in event.to_json().decode()


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "event",
                "userId",
                "anonymousId",
                "previousId",
                "messageId",
                "timestamp",
                "sentAt",
                "originalTimestamp",
                "properties",
                "traits",
                "context",
                "name",
                "category",
                "channel",
            ]
        ),
        json_values | st.sampled_from(MESSAGE_TYPES),
        max_size=10,
    )
    | json_values
)
def test_any_message_maps_to_an_event_or_a_clear_error(message: Any) -> None:
    result = map_message(4, message, SegmentRequest([message]), RECEIVED)
    if isinstance(result, ItemError):
        assert result.index == 4 and result.reason and result.detail
        return
    if result is None:
        assert message["type"] == "group"
        return
    prepared = prepare(4, result)
    if isinstance(prepared, ItemError):
        assert prepared.index == 4 and prepared.reason and prepared.detail


@given(
    st.binary(max_size=200) | json_values.map(orjson.dumps),
    st.sampled_from(["batch", *MESSAGE_TYPES]),
)
def test_any_body_is_a_request_or_a_body_error(body: bytes, kind: str) -> None:
    try:
        request = parse_segment_request(body, kind)
    except BodyError as exc:
        assert str(exc)
        return
    assert isinstance(request.messages, list)
