"""Source mappings and survey webhooks on a real collector and the embedded broker: a Segment
batch mapped by its source's rules (the rest counted as unmapped), and signed survey
responses (``POST /v1/webhooks/<source>``) as survey touchpoints with the e-mail hashed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate
from snowplow_tracker.events.self_describing import SelfDescribing
from snowplow_tracker.events.structured_event import StructuredEvent
from snowplow_tracker.self_describing_json import SelfDescribingJson
from snowplow_tracker.subject import Subject
from snowplow_tracker.tracker import Tracker

from pipeline.pii import hash_email
from pipeline.settings import Settings, to_environment
from streams.broker import EmbeddedBroker
from streams.collector import Collector, configured_secrets, webhook_secrets
from streams.topics import RAW
from tests.helpers import http_get, metric_values, read_http_response, read_topic
from tests.integration.test_segment import (
    EMAIL,
    PII_KEY,
    STORE_KEY,
    WEB_KEY,
    Running,
    raw_post,
    running_collector,
)
from tests.integration.test_snowplow import Sent, emitter, track

pytestmark = pytest.mark.integration
SURVEY_KEY = "survey-tool-key-0123456789"
SECRET = "survey-webhook-secret-42"
JOURNEYS = """\
version: 3
journeys:
  - name: shop
    stages: [{name: pay, match: [{touchpoint: "checkout.*"}], timeout: 1h}]
    goal: [{touchpoint: "order.placed"}]
sources:
  web-sdk:
    rules:
      - event: Checkout Payment Submitted
        where: {status: declined}
        touchpoint: checkout.payment
        action: pay
        outcome: error
        outcome_reason: payment_declined
      - event: "Order *"
        touchpoint: order.placed
        revenue: order.total
      - event: "Checkout.Apply Coupon"
        touchpoint: checkout.coupon
        action: apply
      - event: "com.acme/nps_response"
        touchpoint: survey.nps
        nps: score
  surveys:
    webhook:
      kind: nps
      score: event_data.score
      email: event_data.person.email
      occurred_at: event_data.created_at
      response_id: event_data.id
      signature:
        header: X-Survey-Signature
        secret: surveys
        encoding: hex
        prefix: "sha256="
"""


@pytest.fixture()
def collector(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Running]:
    journeys = tmp_path / "journeys.yaml"
    journeys.write_text(JOURNEYS)
    keys = {
        "web-sdk": {"key": WEB_KEY, "channels": ["web", "app"]},
        "store-feed": {"key": STORE_KEY, "channels": ["store"]},
        "surveys": {"key": SURVEY_KEY, "channels": ["email"]},
    }
    secrets = tmp_path / "webhook-secrets.json"  # a mounted secret, not the repository
    secrets.write_text(json.dumps({"surveys": SECRET}))
    yield from running_collector(
        broker,
        tmp_path,
        journeys_file=journeys,
        collector_api_keys=json.dumps(keys),
        webhook_secrets_file=secrets,
    )


def stored(collector: Running) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in read_topic(collector.broker.url, RAW)]


def test_a_segment_batch_is_mapped_by_its_sources_rules(collector: Running) -> None:
    batch = [
        {
            "type": "track",
            "event": "Checkout Payment Submitted",
            "userId": "c-1",
            "messageId": "m-declined",
            "properties": {"status": "declined"},
        },
        {
            "type": "track",
            "event": "Order Completed",
            "userId": "c-1",
            "messageId": "m-order",
            "properties": {"order": {"total": 42.5}},
        },
        {"type": "track", "event": "Coupon Applied", "userId": "c-1", "messageId": "m-coupon"},
        {"type": "track", "event": "Coupon Applied", "userId": "c-2", "messageId": "m-coupon2"},
    ]
    status, _, answer = raw_post(collector.url, "/v1/batch", orjson.dumps({"batch": batch}))
    assert (status, answer["accepted"]) == (200, 4), answer
    events = {e["event_id"]: e for e in stored(collector)}
    declined = events["m-declined"]
    assert (declined["touchpoint"], declined["action"], declined["outcome"]) == (
        "checkout.payment",
        "pay",
        "error",
    )
    assert declined["outcome_reason"] == "payment_declined"
    assert (events["m-order"]["touchpoint"], events["m-order"]["revenue"]) == (
        "order.placed",
        "42.5000",
    )
    assert events["m-coupon"]["touchpoint"] == "coupon.applied"  # the default, still stored
    _, text = http_get(f"{collector.url}/metrics")
    unmapped = metric_values(text.decode(), "jw_collector_unmapped_events_total")
    assert unmapped == {(("event", "Coupon Applied"), ("source", "web-sdk")): 2.0}


def test_snowplow_tracker_events_are_mapped_by_the_same_rules(collector: Running) -> None:
    """The real tracker: a structured and a self-describing event mapped by rules, a
    structured event no rule maps stored under its default name and counted."""
    sent = Sent()
    tracker = Tracker(
        "sp",
        emitter(collector.url, sent=sent),
        subject=Subject().set_user_id("c-7").set_domain_user_id("d-7"),
    )
    ids = {
        "coupon": track(tracker, StructuredEvent("Checkout", "Apply Coupon", label="WINTER")),
        "nps": track(
            tracker,
            SelfDescribing(
                SelfDescribingJson("iglu:com.acme/nps_response/jsonschema/1-0-0", {"score": 4})
            ),
        ),
        "video": track(tracker, StructuredEvent("Video", "play")),
    }
    tracker.flush()
    assert (len(sent.ok), sent.failed) == (3, [])
    events = {e["event_id"]: e for e in stored(collector)}
    coupon, nps, video = (events[ids[k]] for k in ("coupon", "nps", "video"))
    assert (coupon["touchpoint"], coupon["action"]) == ("checkout.coupon", "apply")
    assert (nps["touchpoint"], nps["nps"]) == ("survey.nps", 4)
    assert video["touchpoint"] == "video.play"
    _, text = http_get(f"{collector.url}/metrics")
    unmapped = metric_values(text.decode(), "jw_collector_unmapped_events_total")
    assert unmapped == {(("event", "Video.play"), ("source", "web-sdk")): 1.0}


RESPONSE = {
    "event_type": "survey_response.created",
    "event_data": {
        "id": "resp-5435",
        "score": 3,
        "created_at": 1765108800,
        "comment": "fine",
        "person": {"email": EMAIL},
    },
}


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(
    url: str,
    body: bytes,
    signature: str | None,
    key: str = SURVEY_KEY,
    source: str = "surveys",
    content_type: str = "application/json",
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    if signature is not None:
        headers["X-Survey-Signature"] = signature
    request = urllib.request.Request(
        f"{url}/v1/webhooks/{source}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_a_signed_survey_response_becomes_a_survey_touchpoint(collector: Running) -> None:
    body = orjson.dumps(RESPONSE)
    status, answer = post_webhook(collector.url, body, signed(body))
    assert (status, answer) == (202, {"accepted": 1, "event_id": "resp-5435"})
    # the tool retries (it did not read the answer in time): the same event id
    assert post_webhook(collector.url, body, signed(body))[0] == 202
    records = read_topic(collector.broker.url, RAW)
    assert len(records) == 2
    events = [orjson.loads(r.value) for r in records]
    assert {e["event_id"] for e in events} == {"resp-5435"}
    event = events[0]
    assert (event["touchpoint"], event["action"], event["channel"], event["nps"]) == (
        "survey.nps",
        "respond",
        "email",
        3,
    )
    assert event["email_hash"] == hash_email(EMAIL, PII_KEY.encode())
    assert (event["source"], event["occurred_at"]) == ("surveys", "2025-12-07T12:00:00Z")
    for record in records:  # the raw e-mail never reaches the topic, in any form
        assert EMAIL.encode() not in record.value and EMAIL.lower().encode() not in record.value
        assert b"Jane" not in record.value


def test_bad_signatures_keys_and_bodies_are_refused_and_nothing_is_stored(
    collector: Running,
) -> None:
    body = orjson.dumps(RESPONSE)
    status, answer = post_webhook(collector.url, body, signed(body, "another-secret"))
    assert status == 401 and "X-Survey-Signature" in answer["error"]
    assert post_webhook(collector.url, body, None)[0] == 401
    assert post_webhook(collector.url, body + b" ", signed(body))[0] == 401  # body altered
    assert post_webhook(collector.url, body, signed(body), key="no-such-key-0123456789")[0] == 401
    status, answer = post_webhook(collector.url, body, signed(body), key=WEB_KEY, source="surveys")
    assert status == 403
    status, _ = post_webhook(collector.url, body, signed(body), key=WEB_KEY, source="web-sdk")
    assert status == 404  # web-sdk has no webhook
    status, _ = post_webhook(collector.url, body, signed(body), content_type="text/plain")
    assert status == 415
    no_score = orjson.dumps({"event_data": {"id": "r-1", "person": {"email": EMAIL}}})
    status, answer = post_webhook(collector.url, no_score, signed(no_score))
    assert status == 400 and "event_data.score" in answer["error"], answer
    assert answer["errors"][0]["field"] == "event_data.score"
    out_of_range = orjson.dumps({"event_data": {"id": "r-2", "score": 11, "person": {}}})
    status, answer = post_webhook(collector.url, out_of_range, signed(out_of_range))
    assert status == 400 and answer["errors"][0]["field"] == "event_data.score", answer
    nobody = orjson.dumps({"event_data": {"id": "r-3", "score": 9}})
    status, answer = post_webhook(collector.url, nobody, signed(nobody))
    assert status == 400 and answer["errors"][0]["field"] == "event_data.person.email", answer
    bad_email = orjson.dumps({"event_data": {"id": "r-4", "score": 9, "person": {"email": "x"}}})
    status, answer = post_webhook(collector.url, bad_email, signed(bad_email))
    assert status == 400 and answer["errors"][0]["field"] == "event_data.person.email", answer
    not_json = b"{not json"
    status, answer = post_webhook(collector.url, not_json, signed(not_json))
    assert status == 400 and "not valid JSON" in answer["error"]
    large = orjson.dumps({**RESPONSE, "padding": "x" * 250_000})
    assert post_webhook(collector.url, large, signed(large))[0] == 413
    assert read_topic(collector.broker.url, RAW) == []
    _, text = http_get(f"{collector.url}/metrics")
    requests = metric_values(text.decode(), "jw_collector_requests_total")
    assert requests[(("status", "401"),)] >= 4
    assert SECRET not in collector.log.read_text()


def test_the_key_may_be_in_the_path_and_the_signature_in_base64(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A tool that cannot send a key header posts to /k/<key>/v1/webhooks/<source>; a CSAT
    source signing in base64 and naming the customer by id."""
    journeys = tmp_path / "journeys.yaml"
    journeys.write_text(
        JOURNEYS.split("sources:")[0]
        + """sources:
  csat-tool:
    webhook:
      kind: csat
      score: rating
      customer_id: customer.id
      signature: {header: X-Signature, secret: csat, encoding: base64}
"""
    )
    keys = {"csat-tool": {"key": SURVEY_KEY}}
    running = running_collector(
        broker,
        tmp_path,
        journeys_file=journeys,
        collector_api_keys=json.dumps(keys),
        webhook_secrets=json.dumps({"csat": SECRET}),
    )
    collector = next(running)
    try:
        body = orjson.dumps({"rating": "5", "customer": {"id": "cus-000042"}})
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
        request = urllib.request.Request(
            f"{collector.url}/k/{SURVEY_KEY}/v1/webhooks/csat-tool",
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-Signature": base64.b64encode(digest).decode(),
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            event_id = json.loads(response.read())["event_id"]
        (event,) = stored(collector)
        assert (event["event_id"], event["touchpoint"], event["csat"]) == (
            event_id,
            "survey.csat",
            5,
        )
        assert (event["customer_id"], event["channel"]) == ("cus-000042", "email")
        # Expect: 100-continue: a bad key is refused before the body is sent
        port = int(collector.url.rsplit(":", 1)[1])
        for key, expected in (
            ("not-a-key-at-all", b"HTTP/1.1 401 "),
            (SURVEY_KEY, b"HTTP/1.1 100 "),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(
                    f"POST /k/{key}/v1/webhooks/csat-tool HTTP/1.1\r\nHost: c\r\n"
                    "Content-Type: application/json\r\nExpect: 100-continue\r\n"
                    f"X-Signature: {base64.b64encode(digest).decode()}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                assert sock.recv(65536).startswith(expected)
                if expected.startswith(b"HTTP/1.1 100 "):
                    sock.sendall(body)
                    assert read_http_response(sock)[0] == 202
        assert len(stored(collector)) == 2
    finally:
        next(running, None)


def test_the_openapi_description_has_the_webhook(collector: Running) -> None:
    status, body = http_get(f"{collector.url}/openapi.json")
    assert status == 200
    document = orjson.loads(body)
    validate(document)
    webhook = document["paths"]["/v1/webhooks/{source}"]["post"]
    assert set(webhook["responses"]) >= {"202", "400", "401", "413", "503"}
    assert "/k/{key}/v1/webhooks/{source}" in document["paths"]


def test_a_webhook_naming_a_secret_that_is_not_configured_stops_the_collector(
    tmp_path: Path,
) -> None:
    """At start-up, naming it; a configured one (setting or file) is among the secrets the
    log filter redacts."""
    journeys = tmp_path / "journeys.yaml"
    journeys.write_text(JOURNEYS)
    base: dict[str, Any] = {
        "pii_hash_key": PII_KEY,
        "collector_api_keys": {"surveys": {"key": SURVEY_KEY}},
        "journeys_file": journeys,
    }
    with pytest.raises(ValueError, match=r"sources.surveys.webhook.signature.secret names 'surv"):
        Collector(Settings(**base))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"surveys": SECRET}))
    settings = Settings(**base, webhook_secrets_file=secrets)
    assert Collector(settings).secrets == {"surveys": SECRET.encode()}
    assert SECRET in configured_secrets(settings)
    from_env = Settings(**base, webhook_secrets={"surveys": "from-the-environment"})
    assert webhook_secrets(from_env) == {"surveys": b"from-the-environment"}
    assert "from-the-environment" in to_environment(from_env)["JW_WEBHOOK_SECRETS"]
    secrets.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        webhook_secrets(settings)
