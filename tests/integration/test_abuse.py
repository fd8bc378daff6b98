"""The abuse suite against a real collector on the embedded broker (issue 23 item 5):
malformed and oversized bodies, deep nesting, huge numbers, unicode, control characters, lone
surrogates and NUL bytes, wrong methods and content types, missing, wrong and other sources'
keys, on ``/v1/events``, the Segment routes, the Snowplow tp2 route and a survey webhook.

Every case gets a 4xx whose body names the problem, never a 5xx; the collector keeps serving;
and a batch with one bad item keeps its good ones (they are on ``touchpoints.raw``). One
collector serves the whole module (a few seconds to start), so each case costs one request.
"""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.broker import EmbeddedBroker
from streams.topics import RAW
from tests.helpers import free_port, http_get, read_topic
from tests.integration.test_segment import STORE_KEY, WEB_KEY, Running, running_collector
from tests.integration.test_sources import JOURNEYS, RESPONSE, SECRET, SURVEY_KEY, signed

pytestmark = pytest.mark.integration
TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
DEEP = b"[" * 10_000 + b"]" * 10_000
LONE_SURROGATE = b'"\\ud800"'  # a JSON escape of half a UTF-16 pair
RAW_SURROGATE = b'"\xed\xa0\x80"'  # the same, encoded as (invalid) UTF-8 bytes
MAX_BODY = 200_000  # running_collector's collector_max_body_bytes
MAX_BATCH = 50


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("abuse")
    journeys = tmp / "journeys.yaml"
    journeys.write_text(JOURNEYS)
    secrets = tmp / "webhook-secrets.json"
    secrets.write_text(json.dumps({"surveys": SECRET}))
    keys = {
        "web-sdk": {"key": WEB_KEY, "channels": ["web", "app"]},
        "store-feed": {"key": STORE_KEY, "channels": ["store"]},
        "surveys": {"key": SURVEY_KEY, "channels": ["email"]},
    }
    with EmbeddedBroker(free_port(), tmp / "broker.log") as broker:
        yield from running_collector(
            broker,
            tmp,
            journeys_file=journeys,
            collector_api_keys=json.dumps(keys),
            webhook_secrets_file=secrets,
        )


def dumps(value: Any) -> bytes:
    """JSON of ``value``, integers past 64 bits included (orjson refuses those)."""
    return json.dumps(value).encode()


def send(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """One request with exactly these bytes and headers; the status and the body as text."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def bearer(key: str = WEB_KEY, content_type: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": content_type}


def basic(key: str = WEB_KEY, content_type: str = "application/json") -> dict[str, str]:
    user = base64.b64encode(f"{key}:".encode()).decode()
    return {"Authorization": f"Basic {user}", "Content-Type": content_type}


def refused(answer: tuple[int, str], status: int, *named: str) -> dict[str, Any]:
    """``answer`` is ``status`` (a 4xx) and its body names every one of ``named``."""
    code, text = answer
    assert 400 <= status < 500
    assert code == status, answer
    for word in named:
        assert word.lower() in text.lower(), (word, answer)
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def event(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_id": f"abuse-{uuid.uuid4()}",
        "occurred_at": datetime.now(UTC).isoformat(),
        "channel": "web",
        "touchpoint": "checkout.payment",
        "action": "submit",
        "device_id": "d-1",
    }
    data.update(overrides)
    return data


def stored_ids(collector: Running) -> set[str]:
    return {orjson.loads(r.value)["event_id"] for r in read_topic(collector.broker.url, RAW)}


def still_serving(collector: Running) -> None:
    assert http_get(f"{collector.url}/readyz")[0] == 200
    good = event()
    status, _ = send(collector.url, "POST", "/v1/events", dumps(good), bearer())
    assert status == 202


# --- /v1/events ---------------------------------------------------------------------------


def test_malformed_bodies_on_events_get_400_naming_the_problem(collector: Running) -> None:
    url, path, headers = collector.url, "/v1/events", bearer()
    refused(send(url, "POST", path, b"{nope", headers), 400, "JSON")
    refused(send(url, "POST", path, b"", headers), 400)
    refused(send(url, "POST", path, b"null", headers), 400)
    refused(send(url, "POST", path, b"42", headers), 400)
    refused(send(url, "POST", path, b'"text"', headers), 400)
    refused(send(url, "POST", path, b"[]", headers), 400, "no events")
    refused(send(url, "POST", path, b'{"events": []}', headers), 400, "no events")
    refused(send(url, "POST", path, DEEP, headers), 400, "JSON", "depth")
    deep_field = b'{"events": [{"attributes": {"a": ' + DEEP + b"}}]}"
    refused(send(url, "POST", path, deep_field, headers), 400, "depth")
    refused(send(url, "POST", path, b'{"events": [1e400]}', headers), 400, "infinity")
    refused(send(url, "POST", path, LONE_SURROGATE, headers), 400, "surrogate")
    refused(send(url, "POST", path, RAW_SURROGATE, headers), 400, "UTF-8")
    refused(send(url, "POST", path, b'"\x01"', headers), 400, "control character")
    refused(send(url, "POST", path, b"\xff\xfe{}", headers), 400)
    refused(send(url, "POST", path, b"\x00" * 64, headers), 400)
    ndjson = bearer(content_type="application/x-ndjson")
    answer = send(url, "POST", path, b'{"a": 1}\n\n{nope\n', ndjson)
    refused(answer, 400, "line 3 of the body is not valid JSON", "column 2")
    still_serving(collector)


def test_oversized_bodies_and_batches_get_413_naming_the_limit(collector: Running) -> None:
    url, path, headers = collector.url, "/v1/events", bearer()
    big = dumps(event(attributes={"note": "x" * (MAX_BODY + 10)}))
    refused(send(url, "POST", path, big, headers), 413, str(MAX_BODY))
    many = dumps([event() for _ in range(MAX_BATCH + 1)])
    refused(send(url, "POST", path, many, headers), 413, str(MAX_BATCH), str(MAX_BATCH + 1))
    still_serving(collector)


def test_wrong_methods_content_types_and_keys_are_refused(collector: Running) -> None:
    url, path, body = collector.url, "/v1/events", dumps(event())
    refused(send(url, "GET", path, None, bearer()), 405, "method not allowed")
    refused(send(url, "PUT", path, body, bearer()), 405, "method not allowed")
    refused(send(url, "DELETE", path, None, bearer()), 405, "method not allowed")
    refused(send(url, "POST", path, body, bearer(content_type="text/csv")), 415, "text/csv")
    refused(send(url, "POST", path, body, bearer(content_type="")), 415, "content type")
    refused(send(url, "POST", path, body, {"Content-Type": "application/json"}), 401, "API key")
    refused(send(url, "POST", path, body, bearer("not-a-key-0123456789")), 401, "API key")
    refused(send(url, "POST", path, body, bearer("")), 401, "API key")
    refused(send(url, "POST", path, body, basic()), 401, "API key")  # a Segment scheme
    # another source's key: the store feed may not send web events
    answer = refused(send(url, "POST", path, body, bearer(STORE_KEY)), 403, "channel")
    assert answer["errors"][0]["reason"] == "channel_not_allowed"
    # the survey tool's key on the events route: its channel is e-mail only
    refused(send(url, "POST", path, body, bearer(SURVEY_KEY)), 403, "channel")
    refused(send(url, "POST", "/v1/nothing-here", body, bearer()), 404, "not found")
    still_serving(collector)


def test_one_bad_item_never_loses_the_good_ones_of_its_batch(collector: Running) -> None:
    """Each bad item beside two good ones: 202, the bad one listed by index and field, the
    good ones on touchpoints.raw, the bad one not."""
    bad_items: list[tuple[dict[str, Any], str]] = [
        (event(touchpoint="<img src=x onerror=alert(1)>"), "touchpoint"),
        (event(touchpoint="checkout.\u0000payment"), "touchpoint"),
        (event(action="s\u0000ubmit"), "action"),
        (event(channel="w\u00e9b"), "channel"),
        (event(channel=["web"]), "channel"),
        (event(channel={"web": 1}), "channel"),
        (event(duration_ms=2**70), "duration_ms"),
        (event(revenue=2**70), "revenue"),
        (event(csat=1e300), "csat"),
        (event(sentiment=-1e308), "sentiment"),
        (event(occurred_at="\ud83d\udca5"), "occurred_at"),
        (event(device_id="x" * 10_000), "device_id"),
        (event(attributes={"k" * 65: 1}), "attributes"),
        (event(attributes={"nested": {"a": [[[1]]]}}), "attributes"),
        (event(attributes={str(n): n for n in range(65)}), "attributes"),
        (event(event_id=""), "event_id"),
        ({"not": "an event"}, ""),
        (event(coupon="x"), "coupon"),
    ]
    kept: set[str] = set()
    for bad, field in bad_items:
        first, second = event(), event()
        kept |= {first["event_id"], second["event_id"]}
        batch = dumps({"events": [first, bad, second]})
        status, text = send(collector.url, "POST", "/v1/events", batch, bearer())
        assert status == 202, (bad, text)
        answer = json.loads(text)
        assert answer["accepted"] == 2, (bad, answer)
        [rejected] = answer["rejected"]
        assert rejected["index"] == 1 and rejected["reason"], (bad, answer)
        if field:
            assert rejected["field"].startswith(field), (bad, answer)
    ids = stored_ids(collector)
    assert kept <= ids
    assert not {bad.get("event_id") for bad, _ in bad_items} & ids


def test_unicode_nul_and_huge_numbers_in_free_fields_are_kept_or_refused(
    collector: Running,
) -> None:
    """Free strings (identifiers, attribute values) may hold any unicode, NUL included, and
    attribute numbers may be huge: accepted as they are (or refused naming the field), never
    a 5xx, and the stored record is valid JSON holding the same value."""
    weird = [
        "\u0000",
        "a\u0000b",
        "\u202e\u0646\u0635 RTL",
        "\U0001f4a5\ufeff\u200b",
        "\x7f\x1b[31m",
        "\ud7ff\ue000\uffff",
        '"><script>alert(1)</script>',
    ]
    sent = [event(customer_id=text, attributes={"note": text}) for text in weird]
    sent.append(event(attributes={"big": 2**70, "small": -(2**70), "tiny": 1e-320}))
    status, text = send(collector.url, "POST", "/v1/events", dumps(sent), bearer())
    assert status == 202, text
    answer = json.loads(text)
    kept = {e["event_id"]: e for e in sent}
    for rejected in answer["rejected"]:
        assert rejected["field"], rejected
        kept.pop(sent[rejected["index"]]["event_id"])
    assert answer["accepted"] == len(kept) >= len(weird)
    stored = {
        record["event_id"]: record
        for record in (orjson.loads(r.value) for r in read_topic(collector.broker.url, RAW))
    }
    for event_id, original in kept.items():
        assert stored[event_id]["attributes"] == original["attributes"], event_id


# --- Segment ------------------------------------------------------------------------------


def test_segment_routes_refuse_bad_bodies_and_keys_with_the_reason(collector: Running) -> None:
    url = collector.url
    for path in ("/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/b", "/v1/t"):
        refused(send(url, "POST", path, b"{nope", basic()), 400, "JSON")
        refused(send(url, "POST", path, DEEP, basic()), 400, "depth")
        refused(send(url, "POST", path, LONE_SURROGATE, basic()), 400, "surrogate")
        refused(send(url, "POST", path, b'{"batch": [1e400]}', basic()), 400, "infinity")
        refused(send(url, "POST", path, b"{}", basic(content_type="text/csv")), 415, "text/csv")
        refused(send(url, "GET", path, None, basic()), 405, "method not allowed")
        refused(send(url, "POST", path, b"{}", basic("no-such-write-key")), 401, "write key")
        refused(send(url, "POST", path, b"{}", {"Content-Type": "application/json"}), 401, "key")
    refused(send(url, "POST", "/v1/batch", b'{"batch": "nope"}', basic()), 400, "batch")
    many = dumps({"batch": [{"type": "track", "event": "X", "userId": "c"}] * 51})
    refused(send(url, "POST", "/v1/batch", many, basic()), 413, "51")
    big = dumps({"type": "track", "event": "X", "userId": "c", "p": "x" * MAX_BODY})
    refused(send(url, "POST", "/v1/track", big, basic()), 413, str(MAX_BODY))
    # another source's key: the store feed may not send web events
    track = dumps({"type": "track", "event": "X", "userId": "c", "messageId": "m-st"})
    refused(send(url, "POST", "/v1/track", track, basic(STORE_KEY)), 403, "channel")
    assert "m-st" not in stored_ids(collector)
    still_serving(collector)


def test_a_segment_batch_keeps_its_good_messages_beside_bad_ones(collector: Running) -> None:
    good = [f"seg-good-{uuid.uuid4()}" for _ in range(2)]
    batch = [
        {"type": "track", "event": "Good", "userId": "c-1", "messageId": good[0]},
        {"type": "track", "event": "Deep", "userId": "c-1", "messageId": "seg-deep",
         "properties": {"a": [[[[[[[[[[1]]]]]]]]]]}},
        {"type": "track", "event": "\u0000", "userId": "c-1", "messageId": "seg-nul"},
        {"type": "track", "event": "Num", "userId": "c-1", "messageId": "seg-num",
         "properties": {"revenue": 2**70}},
        {"type": "track", "event": "X", "userId": "c-1", "timestamp": "\ud83d\udca5",
         "messageId": "seg-time"},
        {"type": "wave", "userId": "c-1", "messageId": "seg-wave"},
        {"type": "track", "event": "Good", "userId": "c-1", "messageId": good[1]},
    ]  # fmt: skip
    status, text = send(collector.url, "POST", "/v1/batch", dumps({"batch": batch}), basic())
    assert status == 200, text
    answer = json.loads(text)
    assert answer["accepted"] >= 2, answer
    for rejected in answer["rejected"]:
        assert rejected["reason"] and 1 <= rejected["index"] <= 5, answer
    ids = stored_ids(collector)
    assert set(good) <= ids
    assert {"seg-wave", "seg-time"}.isdisjoint(ids)


# --- Snowplow -----------------------------------------------------------------------------


def tp2(payloads: list[Any]) -> bytes:
    return dumps({"schema": PAYLOAD_DATA, "data": payloads})


def test_the_snowplow_route_refuses_bad_bodies_and_keys(collector: Running) -> None:
    url, path = collector.url, f"/k/{WEB_KEY}{TP2}"
    json_type = {"Content-Type": "application/json"}
    refused(send(url, "POST", path, b"{nope", json_type), 400, "JSON")
    refused(send(url, "POST", path, DEEP, json_type), 400, "depth")
    refused(send(url, "POST", path, LONE_SURROGATE, json_type), 400, "surrogate")
    refused(
        send(
            url,
            "POST",
            path,
            b'{"schema": "%s", "data": [1e400]}' % PAYLOAD_DATA.encode(),
            json_type,
        ),
        400,
        "infinity",
    )
    refused(send(url, "POST", path, b'{"schema": 1}', json_type), 400, "schema")
    refused(send(url, "POST", path, tp2([]), {"Content-Type": "text/csv"}), 415, "text/csv")
    refused(send(url, "GET", path, None, json_type), 405, "method not allowed")
    many = tp2([{"e": "pv", "duid": "d"}] * 51)
    refused(send(url, "POST", path, many, json_type), 413, "51")
    big = tp2([{"e": "pv", "duid": "d", "page": "x" * MAX_BODY}])
    refused(send(url, "POST", path, big, json_type), 413, str(MAX_BODY))
    body = tp2([{"e": "pv", "eid": "sp-wrong-key", "duid": "d"}])
    refused(send(url, "POST", f"/k/not-a-key-0123{TP2}", body, json_type), 401, "API key")
    refused(send(url, "POST", TP2, body, json_type), 401, "API key")
    refused(send(url, "POST", f"/k/{STORE_KEY}{TP2}", body, json_type), 403, "channel")
    assert "sp-wrong-key" not in stored_ids(collector)
    still_serving(collector)


def test_a_snowplow_batch_keeps_its_good_events_beside_bad_ones(collector: Running) -> None:
    good = [f"sp-good-{uuid.uuid4()}" for _ in range(2)]
    payloads: list[Any] = [
        {"e": "pv", "eid": good[0], "duid": "d", "page": "Home"},
        {"e": "pv", "eid": "sp-nested", "duid": {"a": [[[1]]]}},
        {"e": "se", "eid": "sp-nul", "duid": "d", "se_ca": "\u0000", "se_ac": 2**70},
        {"e": "tr", "eid": "sp-huge", "uid": "c", "tr_tt": 2**70},
        42,
        {"e": "\ud83d\udca5", "eid": "sp-emoji", "duid": "d"},
        {"e": "pv", "eid": good[1], "duid": "d", "page": "Home"},
    ]
    path = f"/k/{WEB_KEY}{TP2}"
    status, text = send(
        collector.url, "POST", path, tp2(payloads), {"Content-Type": "application/json"}
    )
    assert status == 200, text
    answer = json.loads(text)
    for rejected in answer["rejected"]:
        assert rejected["reason"] and 1 <= rejected["index"] <= 5, answer
    ids = stored_ids(collector)
    assert set(good) <= ids
    assert "sp-emoji" not in ids


# --- a survey webhook ---------------------------------------------------------------------


def test_the_webhook_refuses_bad_bodies_and_keys_with_the_reason(collector: Running) -> None:
    url, path = collector.url, "/v1/webhooks/surveys"

    def hook(body: bytes, key: str = SURVEY_KEY, **headers: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "X-Survey-Signature": signed(body),
            **headers,
        }

    for body, named in [
        (b"{nope", "JSON"),
        (DEEP, "JSON"),
        (LONE_SURROGATE, "JSON"),
        (b'{"event_data": {"id": "r", "score": 1e400}}', "JSON"),
        (b'{"event_data": {"id": "r", "score": ' + str(2**70).encode() + b"}}", "score"),
        (b'{"event_data": {"id": "r\\u0000", "score": "\\u0000"}}', "score"),
        (b"[]", "JSON object"),
    ]:
        refused(send(url, "POST", path, body, hook(body)), 400, named)
    body = dumps(RESPONSE)
    refused(send(url, "POST", path, body, hook(body, **{"X-Survey-Signature": "x"})), 401)
    refused(send(url, "POST", path, body, hook(body, "no-such-key-0123456789")), 401, "API key")
    refused(send(url, "POST", path, body, hook(body, WEB_KEY)), 403)
    refused(send(url, "POST", "/v1/webhooks/web-sdk", body, hook(body, WEB_KEY)), 404)
    refused(send(url, "POST", "/v1/webhooks/%00", body, hook(body)), 403, "another source")
    csv = hook(body, **{"Content-Type": "text/csv"})
    refused(send(url, "POST", path, body, csv), 415, "text/csv")
    refused(send(url, "GET", path, None, hook(b"")), 405, "method not allowed")
    big = dumps({**RESPONSE, "padding": "x" * MAX_BODY})
    refused(send(url, "POST", path, big, hook(big)), 413, str(MAX_BODY))
    still_serving(collector)


# --- arbitrary JSON never gets a 5xx ------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        name: json_values | st.text(max_size=30)
        for name in ("event_id", "occurred_at", "channel", "touchpoint", "action", "device_id",
                     "customer_id", "email", "phone", "attributes", "csat", "revenue")
    },
)  # fmt: skip
ROUTES = [
    ("/v1/events", bearer()),
    ("/v1/batch", basic()),
    ("/v1/track", basic()),
    (f"/k/{WEB_KEY}{TP2}", {"Content-Type": "application/json"}),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        json_values,
        st.lists(event_like, max_size=3),
        st.fixed_dictionaries({"events": st.lists(event_like, max_size=3)}),
        st.fixed_dictionaries({"batch": st.lists(json_values, max_size=3)}),
        st.fixed_dictionaries({"schema": st.just(PAYLOAD_DATA), "data": st.lists(json_values)}),
    ),
    route=st.sampled_from(ROUTES),
)
def test_arbitrary_json_bodies_never_get_a_5xx(
    collector: Running, body: Any, route: tuple[str, dict[str, str]]
) -> None:
    path, headers = route
    status, text = send(collector.url, "POST", path, dumps(body), headers)
    assert status < 500, (status, text)
    if status >= 400:
        assert json.loads(text)["error"], text


@settings(max_examples=40, deadline=None)
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_never_get_a_5xx(collector: Running, body: bytes) -> None:
    for path, headers in ROUTES:
        status, text = send(collector.url, "POST", path, body, headers)
        assert status < 500, (path, status, text)
    signature = {"X-Survey-Signature": signed(body)}
    status, text = send(
        collector.url, "POST", "/v1/webhooks/surveys", body, bearer(SURVEY_KEY) | signature
    )
    assert status < 500, (status, text)
