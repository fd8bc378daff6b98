"""The collector's Segment-compatible API, driven by the Python libraries that speak it:
Segment's own (``segment-analytics-python``) and RudderStack's (``rudder-sdk-python``), each
test run with both (the ``sdk`` fixture), against a real embedded broker. A journey sent
through each SDK gives the touchpoints and the journey outputs the same journey sent in the
native contract (``POST /v1/events``) gives."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate
from rudderstack.analytics import Client as RudderClient
from rudderstack.analytics.request import APIError as RudderAPIError
from rudderstack.analytics.request import post as rudder_post
from segment.analytics import Client as SegmentClient
from segment.analytics.request import APIError as SegmentAPIError
from segment.analytics.request import post as segment_post

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.pii import hash_email, hash_phone
from pipeline.settings import Settings
from pipeline.touch import Touch
from streams.broker import EmbeddedBroker
from streams.topics import RAW, ensure_topics
from tests.helpers import (
    free_port,
    http_get,
    jw_env,
    metric_values,
    read_topic,
    start_cli,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.integration
WEB_KEY = "segment-web-key-0123456789"
STORE_KEY = "segment-store-key-0123456789"
PII_KEY = "segment-test-pii-key"
EMAIL = "Jane.Doe@Example.com"
PHONE = "+44 20 7946 0958"


@dataclass(frozen=True)
class Sdk:
    """A Python library that speaks the Segment API: its client, its one-request ``post``
    (``post(write_key, host, batch=...)``) and the error both raise."""

    name: str
    Client: Callable[..., Any]
    post: Callable[..., Any]
    APIError: type[Exception]

    def post_retry(self, write_key: str, host: str, batch: list[dict[str, Any]]) -> Any:
        """The request the client sends again after a failed attempt (Segment's says so in a
        header; RudderStack's sends the same batch with a new sentAt)."""
        if self.name == "segment-analytics-python":
            return self.post(write_key, host, batch=batch, retry_count=1)
        return self.post(write_key, host, batch=batch)


SDKS = [
    Sdk("segment-analytics-python", SegmentClient, segment_post, SegmentAPIError),
    Sdk("rudder-sdk-python", RudderClient, rudder_post, RudderAPIError),
]


@pytest.fixture(params=SDKS, ids=[s.name for s in SDKS])
def sdk(request: pytest.FixtureRequest) -> Sdk:
    return request.param  # type: ignore[no-any-return]


@dataclass
class Running:
    url: str
    broker: EmbeddedBroker
    log: Path


def launch(
    broker_url: str, tmp_path: Path, **settings: object
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A collector process (``settings``: more or other settings than these)."""
    port = free_port()
    keys = {
        "web-sdk": {"key": WEB_KEY, "channels": ["web", "app"]},
        "store-feed": {"key": STORE_KEY, "channels": ["store"]},
    }
    defaults: dict[str, object] = {
        "broker_url": broker_url,
        "collector_port": port,
        "pii_hash_key": PII_KEY,
        "collector_api_keys": json.dumps(keys),
        "collector_max_body_bytes": 200_000,
        "collector_max_batch": 50,
        "log_level": "INFO",
    }
    env = jw_env(**(defaults | settings))
    log = tmp_path / "collector.log"
    return start_cli(["collector"], env, log), f"http://127.0.0.1:{port}", log


@pytest.fixture()
def collector(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Running]:
    yield from running_collector(broker, tmp_path)


def running_collector(
    broker: EmbeddedBroker, tmp_path: Path, **settings: object
) -> Iterator[Running]:
    """A collector (``launch``) on ``broker``, its topics made, until the generator ends."""
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    process, url, log = launch(broker.url, tmp_path, **settings)

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        return http_get(f"{url}/readyz")[0] == 200

    wait_until(ready, 30, "the collector")
    yield Running(url, broker, log)
    stop_process(process)


def stored(collector: Running) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in read_topic(collector.broker.url, RAW)]


def by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["event_id"]: e for e in events}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def raw_post(
    url: str,
    path: str,
    body: bytes,
    key: str | None = WEB_KEY,
    content_type: str = "application/json",
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    request = urllib.request.Request(f"{url}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def test_the_segment_sdk_calls_become_touchpoints(collector: Running, sdk: Sdk) -> None:
    """track, page, screen, identify, alias (and group) through the real client, one request
    each (sync_mode), then a gzip batch from its background consumer: the exact touchpoints,
    identifiers hashed, event ids = messageIds, channel from the context."""
    client = sdk.Client(WEB_KEY, host=collector.url, sync_mode=True)
    client.identify(
        user_id="c-1042",
        anonymous_id="anon-1",
        traits={"email": EMAIL, "phone": PHONE, "name": "Jane Doe"},
        message_id="m-identify",
    )
    client.track(
        anonymous_id="anon-1",
        event="Checkout Payment Submitted",
        properties={
            "revenue": 19.99,
            "currency": "eur",
            "items": 2,
            "outcome": "error",
            "outcome_reason": "payment_declined",
            "coupon": {"code": "X1"},
        },
        message_id="m-track",
    )
    client.page(
        anonymous_id="anon-1",
        category="Checkout",
        name="Payment",
        properties={"path": "/checkout/payment", "title": "Pay"},
        message_id="m-page",
    )
    client.screen(
        user_id="c-1042",
        name="Order Summary",
        context={
            "app": {"name": "Shop", "version": "1.2"},
            "device": {"id": "dev-9", "type": "ios"},
        },
        message_id="m-screen",
    )
    client.alias(previous_id="anon-1", user_id="c-1042", message_id="m-alias")
    client.group(user_id="c-1042", group_id="acme", message_id="m-group")

    errors: list[Exception] = []
    batcher = sdk.Client(
        WEB_KEY,
        host=collector.url,
        gzip=True,
        upload_interval=0.2,
        on_error=lambda error, batch: errors.append(error),
    )
    for n in range(3):
        batcher.track(
            user_id="c-1042",
            event=f"app.step_{n}",
            context={"device": {"type": "android"}},
            message_id=f"m-batch-{n}",
        )
    batcher.flush()
    batcher.join()
    assert errors == []

    events = by_id(stored(collector))
    assert sorted(events) == sorted(
        [
            "m-identify",
            "m-track",
            "m-page",
            "m-screen",
            "m-alias",
            "m-batch-0",
            "m-batch-1",
            "m-batch-2",
        ]
    )  # the group call was accepted and skipped
    pick = ("touchpoint", "action", "channel", "customer_id", "anonymous_id", "device_id", "source")
    summary = {k: {f: e.get(f) for f in pick} for k, e in events.items()}
    assert summary["m-identify"] == {
        "touchpoint": "identity.identify",
        "action": "identify",
        "channel": "web",
        "customer_id": "c-1042",
        "anonymous_id": "anon-1",
        "device_id": None,
        "source": "web-sdk",
    }
    identify = events["m-identify"]
    assert identify["email_hash"] == hash_email(EMAIL, PII_KEY.encode())
    assert identify["phone_hash"] == hash_phone(PHONE, PII_KEY.encode())
    assert not identify.get("attributes")  # traits other than e-mail and phone are not kept

    track = events["m-track"]
    assert {f: track.get(f) for f in pick} | {
        "outcome": track.get("outcome"),
        "outcome_reason": track.get("outcome_reason"),
        "revenue": track.get("revenue"),
        "currency": track.get("currency"),
        "attributes": track.get("attributes"),
    } == {
        "touchpoint": "checkout.payment_submitted",
        "action": "track",
        "channel": "web",
        "customer_id": None,
        "anonymous_id": "anon-1",
        "device_id": None,
        "source": "web-sdk",
        "outcome": "error",
        "outcome_reason": "payment_declined",
        "revenue": "19.9900",
        "currency": "EUR",
        "attributes": {"items": 2, "coupon": '{"code":"X1"}'},
    }
    assert summary["m-page"] | {"attributes": events["m-page"]["attributes"]} == {
        "touchpoint": "checkout.payment",
        "action": "view",
        "channel": "web",
        "customer_id": None,
        "anonymous_id": "anon-1",
        "device_id": None,
        "source": "web-sdk",
        "attributes": {
            "path": "/checkout/payment",
            "title": "Pay",
            "page_name": "Checkout Payment",
        },
    }
    assert summary["m-screen"] == {
        "touchpoint": "order.summary",
        "action": "view",
        "channel": "app",
        "customer_id": "c-1042",
        "anonymous_id": None,
        "device_id": "dev-9",
        "source": "web-sdk",
    }
    assert summary["m-alias"] == {
        "touchpoint": "identity.alias",
        "action": "alias",
        "channel": "web",
        "customer_id": "c-1042",
        "anonymous_id": "anon-1",
        "device_id": None,
        "source": "web-sdk",
    }
    for n in range(3):
        assert (events[f"m-batch-{n}"]["touchpoint"], events[f"m-batch-{n}"]["channel"]) == (
            f"app.step_{n}",
            "app",
        )
    # no raw e-mail address, phone number or other trait anywhere in the topic
    for record in read_topic(collector.broker.url, RAW):
        for raw in (EMAIL, EMAIL.lower(), "7946 0958", "+442079460958", "Jane Doe"):
            assert raw.encode() not in record.value


JOURNEY_USER, JOURNEY_ANON = "c-77", "anon-77"


@dataclass(frozen=True)
class Step:
    """One call of a web journey: the Segment call (arguments as the Python SDKs name them)
    and the touchpoint a team's own translator would send for it in the native contract."""

    call: str  # identify, page or track
    after_s: int  # seconds after the journey's start
    args: dict[str, Any]
    native: dict[str, Any]


def journey_steps(
    user: str = JOURNEY_USER, anonymous: str = JOURNEY_ANON, email: str = EMAIL
) -> list[Step]:
    """Home, a product, the cart, sign-in (identify with an e-mail), a declined payment, a
    paid one and the confirmation: an online purchase converted after a negative moment."""
    anon = {"anonymous_id": anonymous}
    known = {"user_id": user, "anonymous_id": anonymous}
    native_known = {"customer_id": user, "anonymous_id": anonymous}
    return [
        Step(
            "page",
            0,
            anon | {"category": "Home", "name": "Landing"},
            {"touchpoint": "home.landing", "action": "view", "anonymous_id": anonymous},
        ),
        Step(
            "page",
            40,
            anon | {"category": "Product", "name": "Detail", "properties": {"sku": "S-1"}},
            {"touchpoint": "product.detail", "action": "view", "anonymous_id": anonymous},
        ),
        Step(
            "track",
            90,
            anon | {"event": "Cart Item Added", "properties": {"sku": "S-1"}},
            {"touchpoint": "cart.item_added", "action": "track", "anonymous_id": anonymous},
        ),
        Step(
            "identify",
            120,
            known | {"traits": {"email": email}},
            {"touchpoint": "identity.identify", "action": "identify", "email": email}
            | native_known,
        ),
        Step(
            "track",
            150,
            known
            | {
                "event": "Checkout Payment",
                "properties": {"outcome": "error", "outcome_reason": "payment_declined"},
            },
            {"touchpoint": "checkout.payment", "action": "track", "outcome": "error"}
            | {"outcome_reason": "payment_declined"}
            | native_known,
        ),
        Step(
            "track",
            200,
            known | {"event": "Checkout Payment"},
            {"touchpoint": "checkout.payment", "action": "track"} | native_known,
        ),
        Step(
            "track",
            230,
            known
            | {
                "event": "Checkout Confirmation",
                "properties": {"revenue": 42.5, "currency": "EUR"},
            },
            {"touchpoint": "checkout.confirmation", "action": "track"}
            | {"revenue": "42.5", "currency": "EUR"}
            | native_known,
        ),
    ]


def journey_start() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def send_native_journey(
    url: str, start: datetime, steps: list[Step] | None = None, key: str = WEB_KEY
) -> set[str]:
    """The journey in the native contract (``POST /v1/events``); returns its event ids."""
    events = [
        {
            "event_id": f"native-{n}-{step.native.get('customer_id', step.native['anonymous_id'])}",
            "occurred_at": (start + timedelta(seconds=step.after_s)).isoformat(),
            "channel": "web",
        }
        | step.native
        for n, step in enumerate(steps or journey_steps())
    ]
    request = urllib.request.Request(
        f"{url}/v1/events",
        data=orjson.dumps(events),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 202), response.read()
    return {e["event_id"] for e in events}


JOURNEY_FIELDS = (
    "touchpoint",
    "action",
    "channel",
    "outcome",
    "outcome_reason",
    "customer_id",
    "anonymous_id",
    "device_id",
    "email_hash",
    "phone_hash",
    "currency",
)


def journey_touchpoints(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What the journey's touchpoints say, in time order (revenue as a number)."""
    ordered = sorted(records, key=lambda r: r["occurred_at"])
    return [
        (*(r.get(f) for f in JOURNEY_FIELDS), Decimal(r["revenue"]) if r.get("revenue") else None)
        for r in ordered
    ]


def journey_outputs(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The journey engine's outputs for ``records`` (decoded as the ingest decodes them):
    the outcome, the stages, the identity links, the negative moments and moments of truth,
    the scores and KPIs, without their times and ids."""
    engine = JourneyEngine(load_catalog())
    now = datetime.now(UTC)
    outputs = []
    for record in sorted(records, key=lambda r: r["occurred_at"]):
        event = decode_touchpoint(orjson.dumps(record), now)
        assert isinstance(event, TouchpointEvent), event
        outputs += engine.submit(Touch.from_event(event))
    outputs += engine.advance(2**62)
    facts = [
        (
            o.type,
            o.name,
            o.journey,
            o.stage,
            o.channel,
            o.touchpoint,
            dict(o.detail).get("identifier"),
            o.value,
        )
        for o in outputs
    ]
    return sorted(facts, key=lambda fact: tuple(str(part) for part in fact[:-1]))


def assert_same_journey(sdk_records: list[dict[str, Any]], native: list[dict[str, Any]]) -> None:
    """The SDK's touchpoints (a retried delivery's copy, with the same event id, once) are
    the native ones (their times within the clock-skew correction's network latency), and
    the engine, given every copy, makes the same journey of them."""
    distinct = list(by_id(sdk_records).values())
    assert journey_touchpoints(distinct) == journey_touchpoints(native)
    for a, b in zip(
        sorted(r["occurred_at"] for r in distinct),
        sorted(r["occurred_at"] for r in native),
        strict=True,
    ):
        assert abs(at(a) - at(b)) < timedelta(seconds=2)
    outputs, expected = journey_outputs(sdk_records), journey_outputs(native)
    assert [o[:-1] for o in outputs] == [o[:-1] for o in expected]
    for output, wanted in zip(outputs, expected, strict=True):  # durations: the latency again
        assert (output[-1] is None) == (wanted[-1] is None), output
        assert output[-1] is None or abs(output[-1] - wanted[-1]) < 0.5, (output, wanted)
    facts = {(o[0], o[1], o[2]) for o in outputs}
    assert ("journey", "converted", "online_purchase") in facts
    assert any(kind == "negative_moment" for kind, _, _ in facts)
    assert any(kind == "identity" for kind, _, _ in facts)


def send_sdk_journey(
    sdk: Sdk, url: str, start: datetime, steps: list[Step] | None = None, key: str = WEB_KEY
) -> None:
    """The journey through ``sdk``'s client: one gzip batch from its background consumer."""
    errors: list[Exception] = []
    client = sdk.Client(
        key,
        host=url,
        gzip=True,
        upload_interval=0.2,
        on_error=lambda error, batch: errors.append(error),
    )
    for step in steps or journey_steps():
        call = getattr(client, step.call)
        call(**step.args, timestamp=start + timedelta(seconds=step.after_s))
    client.flush()
    client.join()
    assert errors == []


def test_a_journey_through_the_sdk_is_the_journey_in_the_native_contract(
    collector: Running, sdk: Sdk
) -> None:
    """The same web journey through the SDK and as native events: the same touchpoints and,
    through the journey engine, the same outcome, stages, identity links, negative moments
    and scores."""
    start = journey_start()
    send_sdk_journey(sdk, collector.url, start)
    native_ids = send_native_journey(collector.url, start)
    records = stored(collector)
    native = [r for r in records if r["event_id"] in native_ids]
    from_sdk = [r for r in records if r["event_id"] not in native_ids]
    assert len(native) == len(from_sdk) == len(journey_steps())
    assert_same_journey(from_sdk, native)


def test_timestamps_are_corrected_for_the_device_clock(collector: Running) -> None:
    """A device whose clock is two hours behind: timestamp + (receivedAt - sentAt). A message
    without a timestamp happened when it was received; a batch without sentAt keeps its
    timestamps (a historical import)."""
    now = datetime.now(UTC)
    device_now = now - timedelta(hours=2)
    messages = [
        {
            "type": "track",
            "event": "Skewed",
            "userId": "c-1",
            "messageId": "m-skew",
            "timestamp": (device_now - timedelta(seconds=30)).isoformat(),
        },
        {"type": "track", "event": "No Time", "userId": "c-1", "messageId": "m-none"},
    ]
    segment_post(WEB_KEY, collector.url, batch=messages, sentAt=device_now.isoformat())
    historical = now - timedelta(days=3)
    status, _, body = raw_post(
        collector.url,
        "/v1/track",
        orjson.dumps(
            {
                "event": "Imported",
                "userId": "c-1",
                "messageId": "m-old",
                "timestamp": historical.isoformat(),
            }
        ),
    )
    assert (status, body["success"]) == (200, True)
    events = by_id(stored(collector))
    skewed = events["m-skew"]
    received = at(skewed["received_at"])
    corrected = at(skewed["occurred_at"])
    assert abs((received - corrected) - timedelta(seconds=30)) < timedelta(seconds=2)
    assert abs(corrected - (now - timedelta(seconds=30))) < timedelta(seconds=5)
    assert events["m-none"]["occurred_at"] == events["m-none"]["received_at"]
    assert at(events["m-old"]["occurred_at"]) == historical


def test_a_bad_write_key_is_a_401_the_sdk_reports(collector: Running, sdk: Sdk) -> None:
    client = sdk.Client("not-a-write-key-at-all", host=collector.url, sync_mode=True)
    with pytest.raises(sdk.APIError) as raised:
        client.track(user_id="c-1", event="Signed In")
    assert getattr(raised.value, "status", None) == 401
    assert getattr(raised.value, "code", None) == "unauthorized"
    errors: list[Exception] = []
    batcher = sdk.Client(
        "not-a-write-key-at-all",
        host=collector.url,
        upload_interval=0.1,
        on_error=lambda error, batch: errors.append(error),
    )
    batcher.track(user_id="c-1", event="Signed In")
    batcher.flush()
    batcher.join()
    assert [(getattr(e, "status", None), getattr(e, "code", None)) for e in errors] == [
        (401, "unauthorized")
    ]
    assert len(errors) == 1  # not retried
    # a key that may not send web or app: 403 for a batch with nothing else
    with pytest.raises(sdk.APIError) as refused:
        sdk.post(STORE_KEY, collector.url, batch=[{"type": "track", "event": "X", "userId": "c-1"}])
    assert getattr(refused.value, "status", None) == 403
    # the write key in the body only (as analytics.js sends it, text/plain)
    body = orjson.dumps(
        {"writeKey": WEB_KEY, "event": "Body Key", "userId": "c-1", "messageId": "m-body"}
    )
    assert raw_post(collector.url, "/v1/t", body, key=None, content_type="text/plain")[0] == 200
    bad = orjson.dumps({"writeKey": "nope-nope-nope-nope", "event": "X", "userId": "c-1"})
    assert raw_post(collector.url, "/v1/track", bad, key=None)[0] == 401
    batch = {  # analytics.js batching: /v1/b, text/plain, the key in the body, one sentAt
        "writeKey": WEB_KEY,
        "sentAt": datetime.now(UTC).isoformat(),
        "batch": [{"type": "page", "name": "Home", "anonymousId": "a-1", "messageId": "m-b"}],
    }
    status, headers, _ = raw_post(
        collector.url, "/v1/b", orjson.dumps(batch), key=None, content_type="text/plain"
    )
    assert (status, headers.get("Access-Control-Allow-Origin")) == (200, "*")
    preflight = urllib.request.Request(f"{collector.url}/v1/b", method="OPTIONS")
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 204
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert sorted(e["event_id"] for e in stored(collector)) == ["m-b", "m-body"]


def test_malformed_requests_get_400_naming_the_field(collector: Running, sdk: Sdk) -> None:
    status, _, body = raw_post(collector.url, "/v1/batch", b'{"batch": "nope"}')
    assert status == 400 and body["code"] == "invalid_request" and "batch" in body["message"]
    assert raw_post(collector.url, "/v1/batch", b"{nope")[0] == 400
    with pytest.raises(sdk.APIError) as raised:  # what the SDK reports
        sdk.post(
            WEB_KEY, collector.url, batch=[{"type": "track", "userId": "c-1", "messageId": "m-x"}]
        )
    assert getattr(raised.value, "status", None) == 400
    assert "field event" in getattr(raised.value, "message", "")
    # a partial batch: the good messages are stored, the bad ones listed (200: not retried)
    response = sdk.post(
        WEB_KEY,
        collector.url,
        batch=[
            {"type": "track", "event": "Good", "userId": "c-1", "messageId": "m-good"},
            {"type": "track", "event": "Bad", "messageId": "m-noid"},
            {"type": "identify", "userId": "c-1", "traits": {"email": "not-an-address"}},
            {"type": "wave", "userId": "c-1"},
        ],
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["success"] is True and answer["accepted"] == 1
    assert [(e["index"], e["reason"], e["field"]) for e in answer["rejected"]] == [
        (1, "missing_identifier", ""),
        (2, "invalid_field", "traits.email"),
        (3, "invalid_field", "type"),
    ]
    too_many = [{"type": "track", "event": "X", "userId": "c-1"}] * 51
    assert raw_post(collector.url, "/v1/batch", orjson.dumps({"batch": too_many}))[0] == 413
    big = orjson.dumps(
        {"batch": [{"type": "track", "event": "X", "userId": "c", "p": "x" * 210_000}]}
    )
    status, _, body = raw_post(collector.url, "/v1/batch", big)
    assert (status, body["code"]) == (413, "too_large")
    assert raw_post(collector.url, "/v1/batch", b"{}", content_type="text/csv")[0] == 415
    assert [e["event_id"] for e in stored(collector)] == ["m-good"]


def test_a_retried_batch_carries_the_same_event_ids(collector: Running, sdk: Sdk) -> None:
    """The SDK's retry of a batch (same messageIds, a new sentAt) gives the same event ids,
    which the workers and ClickHouse deduplicate; a message without a messageId gets an id
    derived from its content, the same on the retry."""
    batch = [
        {
            "type": "track",
            "event": "Retried",
            "userId": "c-7",
            "messageId": "m-retry-1",
            "timestamp": datetime.now(UTC).isoformat(),
        },
        {
            "type": "page",
            "name": "Home",
            "anonymousId": "a-7",
            "timestamp": datetime.now(UTC).isoformat(),
        },
    ]
    sdk.post(WEB_KEY, collector.url, batch=[dict(m) for m in batch])
    sdk.post_retry(WEB_KEY, collector.url, [dict(m) for m in batch])
    events = stored(collector)
    assert len(events) == 4
    copies: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        copies.setdefault(event["event_id"], []).append(event)
    assert "m-retry-1" in copies and all(len(c) == 2 for c in copies.values())
    for a, b in copies.values():
        assert abs(at(a["occurred_at"]) - at(b["occurred_at"])) < timedelta(seconds=2)
        assert {k: v for k, v in a.items() if k not in ("occurred_at", "received_at")} == {
            k: v for k, v in b.items() if k not in ("occurred_at", "received_at")
        }


def test_the_sdk_retries_after_a_503_until_the_broker_is_up(tmp_path: Path, sdk: Sdk) -> None:
    """Back-pressure: with the broker down the collector answers 503 with Retry-After; the
    SDK keeps the batch, waits that long and sends it again; once the broker is up the
    events are stored, once each, and the SDK reports no error."""
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    process, url, log = launch(broker.url, tmp_path)
    try:
        wait_until(lambda: http_get(f"{url}/livez")[0] == 200, 30, "the collector")
        with pytest.raises(sdk.APIError) as raised:
            sdk.post(WEB_KEY, url, batch=[{"type": "track", "event": "X", "userId": "c-9"}])
        assert getattr(raised.value, "status", None) == 503
        assert getattr(raised.value, "code", None) == "unavailable"
        one = orjson.dumps({"batch": [{"type": "track", "event": "X", "userId": "c-9"}]})
        status, headers, _ = raw_post(url, "/v1/batch", one)
        assert (status, headers["Retry-After"]) == (503, "5")
        errors: list[Exception] = []
        client = sdk.Client(
            WEB_KEY,
            host=url,
            upload_interval=0.1,
            on_error=lambda error, batch: errors.append(error),
        )
        for n in range(3):
            client.track(user_id="c-9", event="Waited", message_id=f"m-wait-{n}")

        def refused() -> float:
            text = http_get(f"{url}/metrics")[1].decode()
            return metric_values(text, "jw_collector_requests_total").get((("status", "503"),), 0)

        wait_until(lambda: refused() >= 3, 30, "the SDK's first attempt refused")  # ours, then
        broker.start()
        ensure_topics(Settings(broker_url=broker.url, partitions=2))
        wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, 60, "ready")
        started = time.monotonic()
        client.flush()
        client.join()
        assert errors == [] and time.monotonic() - started < 30
        ids = sorted(orjson.loads(r.value)["event_id"] for r in read_topic(broker.url, RAW))
        assert ids == ["m-wait-0", "m-wait-1", "m-wait-2"]
    finally:
        stop_process(process)
        broker.stop()
    assert WEB_KEY not in log.read_text()


def test_the_openapi_description_has_the_segment_api(collector: Running) -> None:
    status, body = http_get(f"{collector.url}/openapi.json")
    assert status == 200
    document = json.loads(body)
    validate(document)
    assert {"/v1/batch", "/v1/track", "/v1/identify"} <= set(document["paths"])
    assert set(document["paths"]["/v1/batch"]["post"]["responses"]) >= {"200", "400", "401", "503"}
