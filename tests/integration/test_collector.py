"""The HTTP collector against a real broker: every status code, partial batches, PII."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate

from pipeline.pii import hash_email, hash_phone
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import RAW, ensure_topics
from tests.helpers import (
    free_port,
    http_get,
    jw_env,
    read_topic,
    run_cli,
    start_cli,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.integration
WEB_KEY = "web-key-0123456789abcdef"
STORE_KEY = "store-key-0123456789abcdef"
PII_KEY = "collector-test-pii-key"
EMAIL = "Jane.Doe@Example.com"
PHONE = "+44 20 7946 0958"


@dataclass
class Running:
    url: str
    broker: EmbeddedBroker
    log: Path
    process: subprocess.Popen[bytes]


@pytest.fixture()
def collector(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Running]:
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    port = free_port()
    keys = {
        "web-sdk": {"key": WEB_KEY, "channels": ["web", "app"]},
        "store-feed": {"key": STORE_KEY},
    }
    env = jw_env(
        broker_url=broker.url,
        collector_port=port,
        pii_hash_key=PII_KEY,
        collector_api_keys=json.dumps(keys),
        collector_max_body_bytes=200_000,
        collector_max_batch=50,
        log_level="INFO",
    )
    log = tmp_path / "collector.log"
    process = start_cli(["collector"], env, log)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        return http_get(f"{url}/readyz")[0] == 200

    wait_until(ready, 30, "the collector")
    yield Running(url, broker, log, process)
    stop_process(process)


def event(**overrides: Any) -> dict[str, Any]:
    data = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "channel": "web",
        "touchpoint": "checkout.payment",
        "action": "submit",
        "device_id": "d-1",
    }
    data.update(overrides)
    return data


def post(
    url: str,
    body: Any,
    key: str | None = WEB_KEY,
    content_type: str = "application/json",
    raw: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else orjson.dumps(body)
    request = urllib.request.Request(f"{url}/v1/events", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_a_single_event_is_acknowledged_after_the_broker_has_it(collector: Running) -> None:
    sent = event(email=EMAIL, phone=PHONE)
    status, body = post(collector.url, sent)
    assert (status, body) == (202, {"accepted": 1, "rejected": []})
    # 202 came after the broker's acknowledgement: the record is readable right away.
    records = read_topic(collector.broker.url, RAW)
    assert len(records) == 1
    stored = orjson.loads(records[0].value)
    assert stored["event_id"] == sent["event_id"]
    assert stored["source"] == "web-sdk" and "received_at" in stored
    assert stored["email_hash"] == hash_email(EMAIL, PII_KEY.encode())
    assert stored["phone_hash"] == hash_phone(PHONE, PII_KEY.encode())
    assert "email" not in stored and "phone" not in stored


def test_a_batch_accepts_the_good_events_and_reports_each_bad_one(collector: Running) -> None:
    batch = [event(), event(csat=9), event(channel="store"), event(), event(coupon="X")]
    status, body = post(collector.url, {"events": batch})
    assert status == 202 and body["accepted"] == 2
    assert [(e["index"], e["reason"], e["field"]) for e in body["rejected"]] == [
        (1, "invalid_field", "csat"),
        (2, "channel_not_allowed", "channel"),
        (4, "unknown_field", "coupon"),
    ]
    assert len(read_topic(collector.broker.url, RAW)) == 2
    ndjson = b"\n".join(orjson.dumps(event()) for _ in range(3))
    status, body = post(collector.url, None, content_type="application/x-ndjson", raw=ndjson)
    assert (status, body["accepted"]) == (202, 3)


def test_status_codes(collector: Running) -> None:
    url = collector.url
    assert post(url, event(), key=None)[0] == 401
    assert post(url, event(), key="not-a-key-at-all-xxxxx")[0] == 401
    assert post(url, [event(channel="store")], key=WEB_KEY)[0] == 403
    assert (
        post(url, event(channel="store"), key=STORE_KEY)[0] == 202
    )  # that key may send any channel
    status, body = post(url, [event(csat=0), event(nps=11)])
    assert status == 400 and [e["field"] for e in body["errors"]] == ["csat", "nps"]
    assert post(url, None, raw=b"{nope")[0] == 400
    assert post(url, event(), content_type="text/plain")[0] == 415
    assert post(url, None, raw=b"[" + b" " * 210_000 + b"]")[0] == 413
    assert post(url, [event() for _ in range(51)])[0] == 413
    assert (
        post(url, event(attributes={"blob": "x" * 70_000}))[1]["errors"][0]["reason"] == "too_large"
    )


def test_raw_personal_data_never_reaches_the_topic_or_the_log(collector: Running) -> None:
    batch = [
        event(email=EMAIL, phone=PHONE),
        event(email=EMAIL, csat=7),
        event(email="not-an-email"),
    ]
    status, _ = post(collector.url, batch)
    assert status == 202
    stop_process(collector.process)
    raw_values = (EMAIL, EMAIL.lower(), "7946 0958", "+442079460958", "not-an-email")
    for record in read_topic(collector.broker.url, RAW):
        assert not any(value.encode() in record.value for value in raw_values)
    log = collector.log.read_text()
    assert not any(value in log for value in raw_values)


def test_emails_and_phone_numbers_in_free_text_are_redacted_before_the_topic(
    collector: Running,
) -> None:
    """JW_FREE_TEXT_PII=redact (the default): attribute values and names, the session hint.
    The event is accepted; what the topic holds has neither the address nor the number, and
    ids, times and prices beside them are kept as sent. An e-mail address in a field that
    must be a name (outcome_reason) gets the event refused: nothing of it is stored."""
    note = f"customer {EMAIL} asked to be called on {PHONE} about ORD-2026-000123"
    sent = event(
        session_hint="jane.doe@example.com",
        attributes={
            "note": note,
            "callback": "020 7946 0958",
            EMAIL: "named after an address",
            "at": "2026-11-23T10:00:00Z",
            "price": "1,299.00",
            "order": "ORD-2026-000123",
            "basket": "123e4567-e89b-12d3-a456-426614174000",
            "items": 3,
        },
    )
    refused = event(outcome="error", outcome_reason=EMAIL, attributes={"note": note})
    status, body = post(collector.url, [sent, refused])
    assert status == 202 and body["accepted"] == 1
    assert [(e["index"], e["field"]) for e in body["rejected"]] == [(1, "outcome_reason")]
    records = read_topic(collector.broker.url, RAW)
    assert len(records) == 1
    stored = orjson.loads(records[0].value)
    assert stored["event_id"] == sent["event_id"]
    assert stored["session_hint"] == "[redacted-email]"
    assert stored["attributes"] == {
        "note": "customer [redacted-email] asked to be called on [redacted-phone] about "
        "ORD-2026-000123",
        "callback": "[redacted-phone]",
        "[redacted-email]": "named after an address",
        "at": "2026-11-23T10:00:00Z",
        "price": "1,299.00",
        "order": "ORD-2026-000123",
        "basket": "123e4567-e89b-12d3-a456-426614174000",
        "items": 3,
    }
    stop_process(collector.process)
    for value in (EMAIL, EMAIL.lower(), "7946 0958", "7946"):
        assert value.encode() not in records[0].value
        assert value not in collector.log.read_text()


def test_the_openapi_description_is_valid_and_served(collector: Running) -> None:
    status, body = http_get(f"{collector.url}/openapi.json")
    assert status == 200
    document = json.loads(body)
    validate(document)
    assert set(document["paths"]["/v1/events"]["post"]["responses"]) >= {
        "202",
        "400",
        "401",
        "403",
        "408",
        "413",
        "415",
        "503",
    }


def test_the_day_simulator_can_send_through_the_collector(
    collector: Running, tmp_path: Path
) -> None:
    args = [
        "simulate",
        "--day",
        "2026-11-02",
        "--personas",
        "50",
        "--batch-size",
        "50",
        "--collector-url",
        f"{collector.url}/v1/events",
        "--api-key",
        STORE_KEY,
    ]
    result = run_cli(args, jw_env())
    assert result.returncode == 0, result.stderr
    sent = int(result.stdout.split(": ")[1].split(" events")[0])
    records = [orjson.loads(r.value) for r in read_topic(collector.broker.url, RAW)]
    assert len(records) == sent > 50
    assert {r["source"] for r in records} == {"store-feed"}  # the collector stamps the key's source


def test_an_event_older_than_the_retention_is_refused_not_acknowledged(
    collector: Running,
) -> None:
    """Honest acceptance: ClickHouse would delete it at once, so it is never answered 202."""
    status, body = post(collector.url, event(occurred_at="1970-01-01T00:00:00Z"))
    assert status == 400
    assert [(e["reason"], e["field"]) for e in body["errors"]] == [("too_old", "occurred_at")]
    assert "JW_TOUCHPOINT_RETENTION_DAYS" in body["errors"][0]["detail"]
    two_years = (datetime.now(UTC) - timedelta(days=730)).isoformat()
    status, body = post(collector.url, [event(), event(occurred_at=two_years)])
    assert status == 202 and body["accepted"] == 1
    assert [(e["index"], e["reason"]) for e in body["rejected"]] == [(1, "too_old")]
    # a number beyond 64 bits is refused rather than stored rounded (1e+30)
    raw = orjson.dumps(event())[:-1] + b',"attributes":{"n":1' + b"0" * 30 + b"}}"
    status, body = post(collector.url, None, raw=raw)
    assert status == 400 and body["errors"][0]["field"] == "attributes"
    assert len(read_topic(collector.broker.url, RAW)) == 1


def test_unusable_kafka_settings_stop_the_collector_at_startup_naming_them() -> None:
    """SASL without a user or password: the collector exits at once naming the settings (it
    used to start, and answer 503 forever with nothing in its log)."""
    env = jw_env(
        broker_url="127.0.0.1:1",
        collector_port=free_port(),
        pii_hash_key=PII_KEY,
        collector_api_keys=json.dumps({"web-sdk": {"key": WEB_KEY}}),
        kafka_security_protocol="SASL_PLAINTEXT",
    )
    result = run_cli(["collector"], env, timeout=60)
    assert result.returncode != 0, result
    output = result.stdout + result.stderr
    assert "JW_KAFKA_SASL_USERNAME" in output and "JW_KAFKA_SASL_PASSWORD" in output, output
    assert "Traceback" not in output, output


def test_an_unexpected_error_while_connecting_is_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any error of the background connect is logged and retried: the task never ends
    silently, leaving the collector at 503 for good."""
    import asyncio

    import streams.collector as collector_module

    attempts: list[int] = []

    class Producer:
        def __init__(self, **options: Any) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise RuntimeError("an unexpected client error")

        async def start(self) -> None:
            pass

        async def partitions_for(self, topic: str) -> set[int]:
            return {0}

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(collector_module, "AIOKafkaProducer", Producer)
    settings = Settings(
        broker_url="127.0.0.1:1",
        pii_hash_key=PII_KEY,
        collector_api_keys={"web-sdk": {"key": WEB_KEY}},
    )

    async def connect() -> Any:
        collector = collector_module.Collector(settings)
        await collector.start(None)  # type: ignore[arg-type]
        assert collector._connecting is not None
        await asyncio.wait_for(collector._connecting, 10)
        return collector.producer

    with caplog.at_level("ERROR", logger="streams.collector"):
        producer = asyncio.run(connect())
    assert isinstance(producer, Producer) and len(attempts) == 3
    failures = [r for r in caplog.records if "failed to connect" in r.getMessage()]
    assert len(failures) == 2 and "RuntimeError" in failures[0].error  # type: ignore[attr-defined]


def test_a_key_header_that_is_not_utf8_is_a_401_not_a_500(collector: Running) -> None:
    """Bytes that are not UTF-8 (or not Latin-1) in Authorization or X-API-Key: 401."""
    import socket

    from tests.helpers import read_http_response

    host, port = collector.url.removeprefix("http://").split(":")
    body = orjson.dumps(event())
    for header in (
        b"Authorization: Bearer \xff\xfe" + WEB_KEY.encode(),
        b"Authorization: Bearer " + "clé-ключ-0123456789".encode(),
        b"X-API-Key: \xc3\x28" + STORE_KEY.encode(),
        b"X-API-Key: " + "ключ-ключ-ключ-0123".encode(),
    ):
        request = (
            b"POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
            + header
            + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            status, _, answer = read_http_response(sock)
        assert status == 401, (header, answer)
        # ... and with Expect: 100-continue, refused before the body
        expect = request.replace(
            b"\r\nContent-Length", b"\r\nExpect: 100-continue\r\nContent-Length"
        )
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(expect.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
            assert read_http_response(sock)[0] == 401, header
    assert "Traceback" not in collector.log.read_text()
