"""The collector's Segment-compatible API, driven by Segment's own Python library
(``segment-analytics-python``), against a real embedded broker."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate
from segment.analytics import Client
from segment.analytics.request import APIError, post

from pipeline.pii import hash_email, hash_phone
from pipeline.settings import Settings
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


def test_the_segment_sdk_calls_become_touchpoints(collector: Running) -> None:
    """track, page, screen, identify, alias (and group) through the real client, one request
    each (sync_mode), then a gzip batch from its background consumer: the exact touchpoints,
    identifiers hashed, event ids = messageIds, channel from the context."""
    client = Client(WEB_KEY, host=collector.url, sync_mode=True)
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
    batcher = Client(
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
    post(WEB_KEY, collector.url, batch=messages, sentAt=device_now.isoformat())
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


def test_a_bad_write_key_is_a_401_the_sdk_reports(collector: Running) -> None:
    client = Client("not-a-write-key-at-all", host=collector.url, sync_mode=True)
    with pytest.raises(APIError) as raised:
        client.track(user_id="c-1", event="Signed In")
    assert raised.value.status == 401 and raised.value.code == "unauthorized"
    errors: list[Exception] = []
    batcher = Client(
        "not-a-write-key-at-all",
        host=collector.url,
        upload_interval=0.1,
        on_error=lambda error, batch: errors.append(error),
    )
    batcher.track(user_id="c-1", event="Signed In")
    batcher.flush()
    batcher.join()
    assert [(e.status, e.code) for e in errors if isinstance(e, APIError)] == [
        (401, "unauthorized")
    ]
    assert len(errors) == 1  # not retried
    # a key that may not send web or app: 403 for a batch with nothing else
    with pytest.raises(APIError) as refused:
        post(STORE_KEY, collector.url, batch=[{"type": "track", "event": "X", "userId": "c-1"}])
    assert refused.value.status == 403
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


def test_malformed_requests_get_400_naming_the_field(collector: Running) -> None:
    status, _, body = raw_post(collector.url, "/v1/batch", b'{"batch": "nope"}')
    assert status == 400 and body["code"] == "invalid_request" and "batch" in body["message"]
    assert raw_post(collector.url, "/v1/batch", b"{nope")[0] == 400
    with pytest.raises(APIError) as raised:  # what the SDK reports
        post(WEB_KEY, collector.url, batch=[{"type": "track", "userId": "c-1", "messageId": "m-x"}])
    assert raised.value.status == 400 and "field event" in raised.value.message
    # a partial batch: the good messages are stored, the bad ones listed (200: not retried)
    response = post(
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


def test_a_retried_batch_carries_the_same_event_ids(collector: Running) -> None:
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
    post(WEB_KEY, collector.url, batch=[dict(m) for m in batch])
    post(WEB_KEY, collector.url, batch=[dict(m) for m in batch], retry_count=1)
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


def test_the_sdk_retries_after_a_503_until_the_broker_is_up(tmp_path: Path) -> None:
    """Back-pressure: with the broker down the collector answers 503 with Retry-After; the
    SDK keeps the batch, waits that long and sends it again; once the broker is up the
    events are stored, once each, and the SDK reports no error."""
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    process, url, log = launch(broker.url, tmp_path)
    try:
        wait_until(lambda: http_get(f"{url}/livez")[0] == 200, 30, "the collector")
        with pytest.raises(APIError) as raised:
            post(WEB_KEY, url, batch=[{"type": "track", "event": "X", "userId": "c-9"}])
        assert raised.value.status == 503 and raised.value.code == "unavailable"
        assert raised.value.response.headers["Retry-After"] == "5"
        errors: list[Exception] = []
        client = Client(
            WEB_KEY,
            host=url,
            upload_interval=0.1,
            on_error=lambda error, batch: errors.append(error),
        )
        for n in range(3):
            client.track(user_id="c-9", event="Waited", message_id=f"m-wait-{n}")
        time.sleep(1.0)  # the first attempt has had its 503
        broker.start()
        ensure_topics(Settings(broker_url=broker.url, partitions=2))
        wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, 60, "ready")
        started = time.monotonic()
        client.flush()
        client.join()
        assert errors == [] and time.monotonic() - started < 30
        ids = sorted(orjson.loads(r.value)["event_id"] for r in read_topic(broker.url, RAW))
        assert ids == ["m-wait-0", "m-wait-1", "m-wait-2"]
        requests = metric_values(
            http_get(f"{url}/metrics")[1].decode(), "jw_collector_requests_total"
        )
        assert requests[(("status", "503"),)] >= 2  # ours, then the SDK's first attempt
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
