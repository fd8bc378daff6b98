"""The collector's Snowplow tracker protocol, driven by Snowplow's own Python tracker
(``snowplow-tracker``), against a real embedded broker."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from openapi_spec_validator import validate
from snowplow_tracker.emitters import Emitter
from snowplow_tracker.events.event import Event
from snowplow_tracker.events.page_view import PageView
from snowplow_tracker.events.screen_view import ScreenView
from snowplow_tracker.events.self_describing import SelfDescribing
from snowplow_tracker.events.structured_event import StructuredEvent
from snowplow_tracker.self_describing_json import SelfDescribingJson
from snowplow_tracker.subject import Subject
from snowplow_tracker.tracker import Tracker

from pipeline.pii import hash_email
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import RAW, ensure_topics
from tests.helpers import (
    free_port,
    http_get,
    metric_values,
    read_http_response,
    read_topic,
    stop_process,
    wait_until,
)
from tests.integration.test_segment import (
    EMAIL,
    PHONE,
    PII_KEY,
    STORE_KEY,
    WEB_KEY,
    Running,
    at,
    by_id,
    launch,
    raw_post,
    running_collector,
    stored,
)

pytestmark = pytest.mark.integration
TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
GIF = b"GIF89a"


@pytest.fixture()
def collector(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Running]:
    yield from running_collector(broker, tmp_path)


class Sent:
    """What an emitter reported: the payloads sent (2xx) and those that failed."""

    def __init__(self) -> None:
        self.ok: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []

    def success(self, payloads: list[dict[str, Any]]) -> None:
        self.ok.extend(payloads)

    def failure(self, count: int, payloads: list[dict[str, Any]]) -> None:
        self.failed.extend(payloads)


def emitter(url: str, key: str = WEB_KEY, sent: Sent | None = None, **options: Any) -> Emitter:
    """An emitter whose collector URL carries the key (``<collector>/k/<key>``)."""
    sent = sent or Sent()
    return Emitter(f"{url}/k/{key}", on_success=sent.success, on_failure=sent.failure, **options)


def track(tracker: Tracker, event: Event) -> str:
    """Track ``event``; its eid."""
    eid = tracker.track(event)
    assert eid is not None
    return eid


def tp2(payloads: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"schema": PAYLOAD_DATA, "data": payloads})


def test_the_tracker_events_become_touchpoints(collector: Running) -> None:
    """A page view, a structured event, a self-describing event (with a context holding an
    e-mail address), a mobile screen view (POST), and a page view through the GET pixel: the
    exact touchpoints, event ids = eids, identifiers mapped, personal data never in clear."""
    sent = Sent()
    subject = (
        Subject()
        .set_platform("web")
        .set_user_id("c-1042")
        .set_domain_user_id("duid-1")
        .set_domain_session_id("sid-1")
        .set_network_user_id("nuid-1")
    )
    tracker = Tracker("sp", emitter(collector.url, sent=sent), subject=subject, app_id="shop")
    customer = SelfDescribingJson(
        "iglu:com.acme/customer/jsonschema/1-0-0", {"email": EMAIL, "phone": PHONE}
    )
    true_time = datetime.now(UTC) - timedelta(hours=1)
    ids = {
        "page": track(
            tracker,
            PageView(
                page_url="https://shop.example/checkout/payment",
                page_title="Checkout Payment",
                referrer="https://shop.example/cart",
            ),
        ),
        "struct": track(
            tracker,
            StructuredEvent(
                "Checkout", "Apply Coupon", label="WINTER", value=5, context=[customer]
            ),
        ),
        "ue": track(
            tracker,
            SelfDescribing(
                SelfDescribingJson(
                    "iglu:com.acme/checkout_step/jsonschema/1-0-0",
                    {
                        "step": 2,
                        "outcome": "error",
                        "outcome_reason": "card_declined",
                        "note": f"write to {EMAIL}",
                    },
                ),
                true_timestamp=true_time.timestamp() * 1000,
            ),
        ),
        "screen": track(
            tracker,
            ScreenView("screen-1", "Order Summary", event_subject=Subject().set_platform("mob")),
        ),
    }
    tracker.flush()
    assert (len(sent.ok), sent.failed) == (4, [])
    pixel = Sent()
    get_tracker = Tracker(
        "sp",
        emitter(collector.url, sent=pixel, method="get"),
        subject=Subject().set_domain_user_id("duid-2"),
        encode_base64=False,
    )
    ids["pixel"] = track(get_tracker, PageView(page_url="https://shop.example/", page_title="Home"))
    get_tracker.flush()
    assert (len(pixel.ok), pixel.failed) == (1, [])
    with requests.get(
        f"{collector.url}/k/{WEB_KEY}/i", params={"e": "pp", "duid": "duid-2"}, timeout=10
    ) as answer:  # a page ping: accepted, skipped, still the pixel
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/gif")
        assert answer.content.startswith(GIF)

    events = by_id(stored(collector))
    assert sorted(events) == sorted(ids.values())
    pick = (
        "touchpoint",
        "action",
        "channel",
        "customer_id",
        "anonymous_id",
        "device_id",
        "session_hint",
        "source",
    )
    summary = {name: {f: events[i].get(f) for f in pick} for name, i in ids.items()}
    known = {
        "customer_id": "c-1042",
        "anonymous_id": "duid-1",
        "device_id": "nuid-1",
        "session_hint": "sid-1",
        "source": "web-sdk",
    }
    assert (
        summary["page"]
        == {"touchpoint": "checkout.payment", "action": "view", "channel": "web"} | known
    )
    assert events[ids["page"]]["attributes"] == {
        "app_id": "shop",
        "url": "https://shop.example/checkout/payment",
        "page_title": "Checkout Payment",
        "referrer": "https://shop.example/cart",
    }
    assert (
        summary["struct"]
        == {
            "touchpoint": "checkout.apply_coupon",
            "action": "apply_coupon",
            "channel": "web",
        }
        | known
    )
    assert events[ids["struct"]]["attributes"] == {
        "app_id": "shop",
        "contexts": "customer",
        "label": "WINTER",
        "value": 5.0,
    }
    ue = events[ids["ue"]]
    assert (
        summary["ue"]
        == {"touchpoint": "checkout.step", "action": "track", "channel": "web"} | known
    )
    assert (ue["outcome"], ue["outcome_reason"]) == ("error", "card_declined")
    assert at(ue["occurred_at"]) == true_time.replace(
        microsecond=true_time.microsecond // 1000 * 1000
    )
    assert ue["attributes"]["note"] == "write to [redacted-email]"
    assert ue["attributes"]["schema"] == "iglu:com.acme/checkout_step/jsonschema/1-0-0"
    assert (
        summary["screen"]
        == {
            "touchpoint": "order.summary",
            "action": "view",
            "channel": "app",
        }
        | known
    )
    assert summary["pixel"] == {
        "touchpoint": "home",
        "action": "view",
        "channel": "web",
        "customer_id": None,
        "anonymous_id": "duid-2",
        "device_id": None,
        "session_hint": None,
        "source": "web-sdk",
    }
    for name in ("page", "struct", "screen", "pixel"):  # sent just now: the receive time, about
        event = events[ids[name]]
        assert abs(at(event["occurred_at"]) - at(event["received_at"])) < timedelta(seconds=2)
    # no raw e-mail address or phone number anywhere in the topic
    for record in read_topic(collector.broker.url, RAW):
        for raw in (EMAIL, EMAIL.lower(), "7946 0958", "+442079460958"):
            assert raw.encode() not in record.value


def test_a_retried_event_carries_the_same_event_id(collector: Running) -> None:
    """The tracker resends the payloads of a failed request as they were (a new stm): the
    same event ids, which the workers and ClickHouse deduplicate. An e-mail address as the
    user id becomes the hashed e-mail."""
    sent = Sent()
    tracker = Tracker("sp", emitter(collector.url, sent=sent), subject=Subject().set_user_id(EMAIL))
    tracker.track(StructuredEvent("Account", "Sign In"))
    tracker.track(PageView(page_url="https://shop.example/account", page_title="Account"))
    tracker.flush()
    assert len(sent.ok) == 2
    time.sleep(1.1)  # the emitter's stm is in whole seconds
    again = emitter(collector.url)
    again.send_events([dict(payload) for payload in sent.ok])  # as its retry does
    events = stored(collector)
    assert len(events) == 4
    copies: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        copies.setdefault(event["event_id"], []).append(event)
    assert sorted(copies) == sorted(p["eid"] for p in sent.ok)
    for first, retried in copies.values():
        assert first["email_hash"] == hash_email(EMAIL, PII_KEY.encode())
        assert "customer_id" not in first
        assert abs(at(first["occurred_at"]) - at(retried["occurred_at"])) < timedelta(seconds=2)
        same = ("occurred_at", "received_at")
        assert {k: v for k, v in first.items() if k not in same} == {
            k: v for k, v in retried.items() if k not in same
        }


def test_malformed_requests_get_400_with_the_reason(collector: Running) -> None:
    path = f"/k/{WEB_KEY}{TP2}"
    status, _, body = raw_post(
        collector.url, path, b'{"schema": "iglu:x/y/jsonschema/1-0-0"}', key=None
    )
    assert status == 400 and body["error"].startswith("schema: must be")
    status, _, body = raw_post(collector.url, path, b"{nope", key=None)
    assert status == 400 and "not valid JSON" in body["error"]
    status, _, body = raw_post(
        collector.url, path, tp2([{"e": "se", "se_ca": "Checkout", "duid": "d"}]), key=None
    )
    assert (status, body["errors"][0]["field"]) == (400, "se_ac")
    assert body["error"] == (
        "no event was accepted; event 0: missing_field (field se_ac): "
        "a structured event needs se_ca and se_ac"
    )
    # a partial batch: the good events are stored, the bad ones listed (200: not retried)
    status, _, body = raw_post(
        collector.url,
        path,
        tp2(
            [
                {"e": "pv", "eid": "sp-good", "duid": "d", "page": "Home"},
                {"e": "pv", "eid": "sp-noid"},
                {"e": "tr", "eid": "sp-tr", "uid": "c", "tr_tt": "lots"},
                {"e": "ad", "duid": "d"},
                {"e": "pp", "duid": "d"},
            ]
        ),
        key=None,
        content_type="text/plain",
    )
    assert (status, body["accepted"], body["skipped"]) == (200, 1, 1)
    assert [(e["index"], e["reason"], e["field"]) for e in body["rejected"]] == [
        (1, "missing_identifier", ""),
        (2, "invalid_field", "tr_tt"),
        (3, "invalid_field", "e"),
    ]
    status, _, body = raw_post(collector.url, path, tp2([{"e": "pv", "duid": "d"}] * 51), key=None)
    assert status == 413
    assert raw_post(collector.url, path, tp2([]), key=None, content_type="text/csv")[0] == 415
    status, body = http_get(f"{collector.url}/k/{WEB_KEY}/i?duid=d")
    assert status == 400 and b"e: a tracker payload needs an event type" in body
    assert [e["event_id"] for e in stored(collector)] == ["sp-good"]


def test_a_wrong_key_gets_401_and_nothing_is_stored(collector: Running) -> None:
    sent = Sent()
    refused = emitter(collector.url, key="not-a-key-at-all", sent=sent)
    tracker = Tracker("sp", refused)
    tracker.track(PageView(page_url="https://shop.example/"))
    tracker.flush()
    assert (sent.ok, len(sent.failed)) == ([], 1)
    assert not refused.retry_timer.is_active()  # 401: not retried
    status, _, body = raw_post(collector.url, TP2, tp2([{"e": "pv", "duid": "d"}]), key=None)
    assert status == 401 and "/k/<key>" in body["error"]
    assert http_get(f"{collector.url}/i?e=pv&duid=d", token=None)[0] == 401
    assert http_get(f"{collector.url}/k/nope/i?e=pv&duid=d", token=None)[0] == 401
    # a key that may not send web: 403
    status, _, _ = raw_post(
        collector.url, f"/k/{STORE_KEY}{TP2}", tp2([{"e": "pv", "duid": "d"}]), key=None
    )
    assert status == 403
    assert stored(collector) == []
    # the key as a header instead (a tracker given a requests.Session with it), on the plain path
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {WEB_KEY}"
    ok = Sent()
    plain = Emitter(collector.url, on_success=ok.success, on_failure=ok.failure, session=session)
    Tracker("sp", plain, subject=Subject().set_domain_user_id("d-h")).track(
        PageView(page_url="https://shop.example/", page_title="Header Key")
    )
    plain.flush()
    assert (len(ok.ok), ok.failed) == (1, [])
    assert [e["touchpoint"] for e in stored(collector)] == ["header.key"]
    # Expect: 100-continue: a bad key in the path is refused before the body is sent
    body = tp2([{"e": "pv", "eid": "sp-expect", "duid": "d-x", "page": "Expect"}])
    port = int(collector.url.rsplit(":", 1)[1])
    for key, expected in (("not-a-key-at-all", b"HTTP/1.1 401 "), (WEB_KEY, b"HTTP/1.1 100 ")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                f"POST /k/{key}{TP2} HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            )
            assert sock.recv(65536).startswith(expected)
            if expected.startswith(b"HTTP/1.1 100 "):
                sock.sendall(body)
                assert read_http_response(sock)[0] == 200
    assert [e["event_id"] for e in stored(collector)][-1] == "sp-expect"
    # the browser's CORS preflight, with credentials (the JavaScript tracker's default)
    origin = "https://shop.example"
    preflight = urllib.request.Request(
        f"{collector.url}/k/{WEB_KEY}{TP2}", method="OPTIONS", headers={"Origin": origin}
    )
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]


def test_the_tracker_retries_after_a_503_until_the_broker_is_up(tmp_path: Path) -> None:
    """Back-pressure: with the broker down the collector answers 503 with Retry-After; the
    tracker keeps the events and sends them again; once the broker is up they are stored,
    once each."""
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    process, url, log = launch(broker.url, tmp_path)
    try:
        wait_until(lambda: http_get(f"{url}/livez")[0] == 200, 30, "the collector")
        status, headers, _ = raw_post(
            url, f"/k/{WEB_KEY}{TP2}", tp2([{"e": "pv", "duid": "d"}]), key=None
        )
        assert (status, headers["Retry-After"]) == (503, "5")
        sent = Sent()
        tracker = Tracker(
            "sp",
            emitter(url, sent=sent, max_retry_delay_seconds=2),
            subject=Subject().set_user_id("c-9"),
        )
        ids = sorted(track(tracker, StructuredEvent("Wait", f"Step {n}")) for n in range(3))
        tracker.flush()
        assert len(sent.failed) == 3  # the first attempt had its 503: the tracker retries
        broker.start()
        ensure_topics(Settings(broker_url=broker.url, partitions=2))
        wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, 60, "ready")
        wait_until(lambda: len(sent.ok) == 3, 60, "the tracker's retry")
        stored_ids = sorted(orjson.loads(r.value)["event_id"] for r in read_topic(broker.url, RAW))
        assert stored_ids == ids
        requests_total = metric_values(
            http_get(f"{url}/metrics")[1].decode(), "jw_collector_requests_total"
        )
        assert requests_total[(("status", "503"),)] >= 2  # ours, then the tracker's first
    finally:
        stop_process(process)
        broker.stop()
    assert WEB_KEY not in log.read_text()


def test_the_openapi_description_has_the_tracker_protocol(collector: Running) -> None:
    status, body = http_get(f"{collector.url}/openapi.json")
    assert status == 200
    document = orjson.loads(body)
    validate(document)
    assert {TP2, "/i", f"/k/{{key}}{TP2}", "/k/{key}/i"} <= set(document["paths"])
    assert set(document["paths"][TP2]["post"]["responses"]) >= {"200", "400", "401", "503"}
