"""The Snowplow tracker protocol mapping (pipeline/snowplow.py): examples, and properties over
arbitrary tracker payloads."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.collect import BodyError, ItemError
from pipeline.contract import TouchpointEvent
from pipeline.pii import hash_email
from pipeline.snowplow import (
    EVENT_TYPES,
    PAYLOAD_DATA,
    SKIPPED_TYPES,
    map_event,
    occurred_at,
    parse_post_body,
    parse_query,
)
from tests.unit.test_segment import KEY, RECEIVED, TOUCHPOINT, json_values, prepare, times

SP = "iglu:com.snowplowanalytics.snowplow"
UE = f"{SP}/unstruct_event/jsonschema/1-0-0"
CO = f"{SP}/contexts/jsonschema/1-0-1"


def ms(when: datetime) -> str:
    return str(int(when.timestamp() * 1000))


def b64(value: Any) -> str:
    """Base64url without padding, as the trackers encode ue_px and cx."""
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def unstruct(schema: str, data: Any) -> dict[str, Any]:
    return {"schema": UE, "data": {"schema": schema, "data": data}}


def event_of(payload: dict[str, Any]) -> TouchpointEvent:
    mapped = map_event(0, payload, RECEIVED)
    assert isinstance(mapped, dict), mapped
    event = prepare(0, mapped)
    assert isinstance(event, TouchpointEvent), event
    return event


def test_a_page_view_is_a_view_named_after_the_title() -> None:
    event = event_of(
        {
            "e": "pv",
            "eid": "e-1",
            "duid": "d-1",
            "sid": "s-1",
            "page": "Checkout Payment",
            "url": "https://shop.example/checkout/payment",
            "refr": "https://shop.example/cart",
            "aid": "shop",
            "p": "web",
        }
    )
    assert (event.event_id, event.touchpoint, event.action, event.channel.value) == (
        "e-1",
        "checkout.payment",
        "view",
        "web",
    )
    assert (event.anonymous_id, event.session_hint) == ("d-1", "s-1")
    assert event.attributes == {
        "app_id": "shop",
        "url": "https://shop.example/checkout/payment",
        "page_title": "Checkout Payment",
        "referrer": "https://shop.example/cart",
    }
    untitled = event_of({"e": "pv", "duid": "d", "p": "mob"})
    assert (untitled.touchpoint, untitled.channel.value) == ("page", "app")


def test_times_as_snowplow_derives_them() -> None:
    created = RECEIVED - timedelta(hours=2, minutes=1)  # a device clock two hours behind
    sent = RECEIVED - timedelta(hours=2)
    skewed = {"dtm": ms(created), "stm": ms(sent)}
    assert occurred_at(skewed, RECEIVED) == RECEIVED - timedelta(minutes=1)
    true = RECEIVED - timedelta(days=2)
    assert occurred_at({**skewed, "ttm": ms(true)}, RECEIVED) == true  # the true time wins
    assert occurred_at({"dtm": ms(created)}, RECEIVED) == RECEIVED  # no stm: received
    assert occurred_at({"dtm": ms(sent), "stm": ms(created)}, RECEIVED) == RECEIVED  # sent first
    assert occurred_at({}, RECEIVED) == RECEIVED
    for payload, field in (({"dtm": "yesterday"}, "dtm"), ({"stm": "-5"}, "stm")):
        error = occurred_at(payload, RECEIVED)
        assert isinstance(error, ItemError) and error.field == field


def test_a_structured_event_is_named_after_its_category_and_action() -> None:
    event = event_of(
        {
            "e": "se",
            "uid": "c-1042",
            "se_ca": "Checkout",
            "se_ac": "Add To Cart",
            "se_la": "sku-9",
            "se_pr": "size M",
            "se_va": "2.5",
        }
    )
    assert (event.touchpoint, event.action, event.customer_id) == (
        "checkout.add_to_cart",
        "add_to_cart",
        "c-1042",
    )
    assert event.attributes == {"label": "sku-9", "property": "size M", "value": 2.5}
    for payload, reason, field in (
        ({"e": "se", "uid": "c", "se_ac": "x"}, "missing_field", "se_ca"),
        ({"e": "se", "uid": "c", "se_ca": "x"}, "missing_field", "se_ac"),
        (
            {"e": "se", "uid": "c", "se_ca": "x", "se_ac": "y", "se_va": "lots"},
            "invalid_field",
            "se_va",
        ),
        ({"e": "se", "uid": "c", "se_ca": "!!", "se_ac": "??"}, "invalid_field", "se_ca"),
    ):
        error = map_event(5, payload, RECEIVED)
        assert isinstance(error, ItemError) and (error.index, error.reason, error.field) == (
            5,
            reason,
            field,
        )


def test_a_self_describing_event_is_named_after_its_schema() -> None:
    data = {
        "step": 2,
        "outcome": "error",
        "outcome_reason": "card_declined",
        "revenue": "19.99",
        "currency": "eur",
        "note": "call me on +44 20 7946 0958",
    }
    schema = "iglu:com.acme/checkout_step/jsonschema/1-0-0"
    for field, value in (
        ("ue_pr", orjson.dumps(unstruct(schema, data)).decode()),
        ("ue_px", b64(unstruct(schema, data))),
    ):
        event = event_of({"e": "ue", "duid": "d-1", "eid": "e-ue", field: value})
        assert (event.touchpoint, event.action, event.outcome.value, event.outcome_reason) == (
            "checkout.step",
            "track",
            "error",
            "card_declined",
        )
        assert (str(event.revenue), event.currency) == ("19.9900", "EUR")
        assert event.attributes["schema"] == schema and event.attributes["step"] == 2
        assert "7946" not in event.to_json().decode()  # free text scrubbed by prepare_event
    screen = event_of(
        {
            "e": "ue",
            "duid": "d",
            "p": "web",
            "ue_px": b64(
                unstruct(
                    "iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0",
                    {"name": "Order Summary", "id": "x"},
                )
            ),
        }
    )
    assert (screen.touchpoint, screen.action, screen.channel.value) == (
        "order.summary",
        "view",
        "app",
    )
    for payload, field in (
        ({"e": "ue", "duid": "d"}, "ue_pr"),
        ({"e": "ue", "duid": "d", "ue_px": "***"}, "ue_px"),
        ({"e": "ue", "duid": "d", "ue_pr": "{"}, "ue_pr"),
        ({"e": "ue", "duid": "d", "ue_pr": '{"schema": "x", "data": {}}'}, "ue_pr"),
        ({"e": "ue", "duid": "d", "ue_px": b64(unstruct("acme/x", {}))}, "ue_px.data.schema"),
        ({"e": "ue", "duid": "d", "ue_px": b64(unstruct(schema, [1]))}, "ue_px.data.data"),
        (
            {"e": "ue", "duid": "d", "ue_px": b64(unstruct(schema, {"revenue": "x"}))},
            "ue_px.data.data.revenue",
        ),
    ):
        error = map_event(0, payload, RECEIVED)
        assert isinstance(error, ItemError) and error.field == field, (payload, error)


def test_identifiers_and_contexts() -> None:
    event = event_of(
        {
            "e": "pv",
            "uid": "Jane.Doe@Example.com",
            "duid": "d-1",
            "nuid": "n-1",
            "tnuid": "t-1",
            "cx": b64(
                {
                    "schema": CO,
                    "data": [
                        {
                            "schema": f"{SP}/web_page/jsonschema/1-0-0",
                            "data": {"id": "p"},
                        },
                        {
                            "schema": "iglu:com.acme/user/jsonschema/1-0-0",
                            "data": {"email": "jane@example.com"},
                        },
                    ],
                }
            ),
        }
    )
    # an e-mail address as uid is the hashed e-mail, never a customer id in clear
    assert (event.customer_id, event.email_hash) == (None, hash_email("jane.doe@example.com", KEY))
    assert (event.anonymous_id, event.device_id) == ("d-1", "t-1")  # tnuid over nuid
    assert event.attributes["contexts"] == "web_page,user"  # names only: no context data kept
    assert "example.com" not in event.to_json().decode().lower()
    mobile = event_of(
        {
            "e": "pv",
            "p": "mob",
            "co": orjson.dumps(
                {
                    "schema": CO,
                    "data": [
                        {
                            "schema": f"{SP}/client_session/jsonschema/1-0-2",
                            "data": {
                                "userId": "install-1",
                                "sessionId": "sess-1",
                                "sessionIndex": 3,
                            },
                        }
                    ],
                }
            ).decode(),
        }
    )
    assert (mobile.anonymous_id, mobile.session_hint, mobile.channel.value) == (
        "install-1",
        "sess-1",
        "app",
    )
    for payload, reason, field in (
        ({"e": "pv"}, "missing_identifier", ""),
        ({"e": "pv", "duid": "d" * 129}, "invalid_field", "duid"),
        ({"e": "pv", "duid": "d", "cx": "%%%"}, "invalid_field", "cx"),
        ({"e": "pv", "duid": "d", "co": '{"data": 5}'}, "invalid_field", "co"),
    ):
        error = map_event(0, payload, RECEIVED)
        assert isinstance(error, ItemError) and (error.reason, error.field) == (reason, field)


def test_transactions_page_pings_and_unknown_types() -> None:
    event = event_of(
        {"e": "tr", "uid": "c-1", "tr_id": "o-1", "tr_tt": "49.9", "tr_cu": "gbp", "tr_tx": "8.3"}
    )
    assert (event.touchpoint, event.action, str(event.revenue), event.currency) == (
        "ecommerce.transaction",
        "purchase",
        "49.9000",
        "GBP",
    )
    assert event.attributes == {"order_id": "o-1", "tax": "8.3"}
    error = map_event(0, {"e": "tr", "uid": "c", "tr_tt": "much"}, RECEIVED)
    assert isinstance(error, ItemError) and error.field == "tr_tt"
    for kind in SKIPPED_TYPES:
        assert map_event(0, {"e": kind, "duid": "d"}, RECEIVED) is None
    for payload in ({"e": "ad", "duid": "d"}, {"duid": "d"}, ["e", "pv"]):
        error = map_event(2, payload, RECEIVED)
        assert isinstance(error, ItemError) and error.index == 2
        assert error.field == ("e" if isinstance(payload, dict) else "")


def test_an_event_without_eid_gets_the_same_id_on_a_retry() -> None:
    payload = {"e": "pv", "duid": "d", "dtm": "1796644700000", "page": "Home"}
    first = map_event(0, {**payload, "stm": "1796644800000"}, RECEIVED)
    again = map_event(0, {**payload, "stm": "1796644809000"}, RECEIVED + timedelta(seconds=9))
    assert isinstance(first, dict) and isinstance(again, dict)
    assert first["event_id"] == again["event_id"] and first["event_id"].startswith("sp-")
    error = map_event(0, {**payload, "eid": "x" * 129}, RECEIVED)
    assert isinstance(error, ItemError) and error.field == "eid"


def test_request_bodies() -> None:
    body = orjson.dumps({"schema": PAYLOAD_DATA + "4", "data": [{"e": "pv"}, {"e": "se"}]})
    assert parse_post_body(body) == [{"e": "pv"}, {"e": "se"}]
    for bad, words in (
        (b"{", "JSON"),
        (b"[]", "object"),
        (b'{"data": []}', "schema"),
        (b'{"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": []}', "schema"),
        (orjson.dumps({"schema": PAYLOAD_DATA + "4", "data": {}}), "data"),
    ):
        with pytest.raises(BodyError, match=words):
            parse_post_body(bad)
    assert parse_query({"e": "pv", "duid": "d"}) == [{"e": "pv", "duid": "d"}]
    with pytest.raises(BodyError, match="e"):
        parse_query({"duid": "d"})


# --- properties --------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "" and "@" not in s)


@st.composite
def valid_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A tracker payload as the trackers send it: every value a string."""
    kind = draw(st.sampled_from([k for k in EVENT_TYPES if k not in SKIPPED_TYPES]))
    payload: dict[str, Any] = {"e": kind, "p": draw(st.sampled_from(["web", "mob", "pc", "app"]))}
    for name in draw(
        st.lists(st.sampled_from(["uid", "duid", "nuid", "tnuid"]), min_size=1, unique=True)
    ):
        payload[name] = draw(ids)
    if draw(st.booleans()):
        payload["eid"] = draw(ids)
    if draw(st.booleans()):
        created = draw(times)
        payload["dtm"] = ms(created)
        if draw(st.booleans()):
            payload["stm"] = ms(created + draw(st.timedeltas(timedelta(0), timedelta(hours=3))))
    if draw(st.booleans()):
        payload["ttm"] = ms(draw(times))
    if draw(st.booleans()):
        payload["page"] = draw(st.text(max_size=40))
    properties = draw(st.dictionaries(st.text(max_size=80), json_values, max_size=80))
    if kind == "se":
        payload["se_ca"] = draw(st.from_regex(r"[A-Za-z][A-Za-z0-9 _-]{0,20}", fullmatch=True))
        payload["se_ac"] = draw(st.text(min_size=1, max_size=20).filter(str.strip))
        if draw(st.booleans()):
            payload["se_va"] = str(draw(st.floats(allow_nan=False, allow_infinity=False)))
    elif kind == "ue":
        name = draw(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True))
        wrapped = unstruct(f"iglu:com.acme/{name}/jsonschema/1-0-0", properties)
        if draw(st.booleans()):
            payload["ue_px"] = b64(wrapped)
        else:
            payload["ue_pr"] = orjson.dumps(wrapped).decode()
    elif kind == "tr":
        payload["tr_tt"] = str(draw(st.decimals(min_value=0, max_value=10**9, places=2)))
        payload["tr_id"] = draw(ids)
    if draw(st.booleans()):
        contexts = [{"schema": "iglu:com.acme/thing/jsonschema/1-0-0", "data": properties}]
        payload["cx"] = b64({"schema": CO, "data": contexts})
    return payload


@given(valid_payloads())
def test_every_valid_payload_maps_to_a_valid_touchpoint(payload: dict[str, Any]) -> None:
    original = copy.deepcopy(payload)
    mapped = map_event(0, payload, RECEIVED)
    assert isinstance(mapped, dict), mapped
    event = prepare(0, mapped)
    assert isinstance(event, TouchpointEvent), event
    assert TOUCHPOINT.match(event.touchpoint)
    assert event.channel.value == ("app" if original["p"] in ("mob", "app") else "web")
    if "eid" in original:
        assert event.event_id == original["eid"].strip()
    if "ttm" in original:
        assert event.occurred_at == datetime.fromtimestamp(int(original["ttm"]) / 1000, UTC)
    elif "stm" in original and int(original["dtm"]) < int(original["stm"]):
        skew = timedelta(milliseconds=int(original["stm"]) - int(original["dtm"]))
        assert event.occurred_at == RECEIVED - skew
    else:
        assert event.occurred_at == RECEIVED
    if "uid" in original:
        assert event.customer_id == original["uid"].strip()


@given(valid_payloads(), st.timedeltas(timedelta(0), timedelta(minutes=5)))
def test_a_retry_maps_to_the_same_event_id(payload: dict[str, Any], later: timedelta) -> None:
    """The tracker resends an event with a new stm: the same event_id (eid, or the hash)."""
    first = map_event(0, dict(payload), RECEIVED)
    retried = dict(payload, stm=ms(RECEIVED + later))
    again = map_event(0, retried, RECEIVED + later)
    assert isinstance(first, dict) and isinstance(again, dict)
    assert first["event_id"] == again["event_id"]


payload_fields = st.sampled_from(
    [
        "e", "eid", "uid", "duid", "nuid", "tnuid", "sid", "p", "dtm", "stm", "ttm", "page",
        "se_ca", "se_ac", "se_va", "ue_pr", "ue_px", "co", "cx", "tr_tt", "tr_cu",
    ]
)  # fmt: skip


@given(
    st.dictionaries(
        payload_fields,
        json_values | st.sampled_from(EVENT_TYPES) | st.text(max_size=30),
        max_size=12,
    )
    | json_values
)
def test_any_payload_maps_to_an_event_or_a_clear_error(payload: Any) -> None:
    result = map_event(4, payload, RECEIVED)
    if isinstance(result, ItemError):
        assert result.index == 4 and result.reason and result.detail
        return
    if result is None:
        assert payload["e"] in SKIPPED_TYPES
        return
    prepared = prepare(4, result)
    if isinstance(prepared, ItemError):
        assert prepared.index == 4 and prepared.reason and prepared.detail


@given(st.binary(max_size=200) | json_values.map(orjson.dumps))
def test_any_body_is_payloads_or_a_body_error(body: bytes) -> None:
    try:
        payloads = parse_post_body(body)
    except BodyError as exc:
        assert str(exc)
        return
    assert isinstance(payloads, list)
