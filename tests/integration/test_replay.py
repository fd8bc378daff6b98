"""``journeywatch replay dlq`` on a real broker: dead letters that pass the current contract go
back to the raw topic, keyed as the collector keys them, once; the rest stay and are reported."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from pipeline.contract import Rejection, RejectReason
from pipeline.deadletter import dead_letter_headers
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import DLQ, RAW, ensure_topics
from tests.helpers import jw_env, read_topic, run_cli

pytestmark = pytest.mark.integration


def dead_letter(producer: KafkaProducer, raw: bytes, reason: RejectReason, offset: int) -> None:
    """A record as the ingest agent dead-letters it (headers and all)."""
    rejection = Rejection(reason, "channel", "not accepted by that version", "web", "test")
    headers = dead_letter_headers(rejection, RAW, 0, offset, datetime.now(UTC))
    producer.send(DLQ, raw, key=None, headers=[(k, v.encode()) for k, v in headers.items()])


def event(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "channel": "web",
        "touchpoint": "checkout.payment",
        "action": "submit",
        "customer_id": "cus-7",
        **fields,
    }


def test_replay_sends_what_passes_now_once_and_reports_the_rest(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    env = jw_env(broker_url=broker.url, partitions=2, data_dir=tmp_path / "var")
    producer = KafkaProducer(bootstrap_servers=broker.url)
    # refused by an older, stricter version (a bug since fixed): valid today
    fixed = [event(), event(channel="app", device_id="d-1", customer_id=None)]
    fixed[1].pop("customer_id")
    for n, data in enumerate(fixed):
        dead_letter(producer, orjson.dumps(data), RejectReason.INVALID_FIELD, n)
    # still wrong today
    dead_letter(producer, b"{not json", RejectReason.NOT_JSON, 7)
    dead_letter(producer, orjson.dumps(event(channel="fax")), RejectReason.INVALID_FIELD, 8)
    producer.flush()

    dry = run_cli(["replay", "dlq", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert "would replay 2 events that pass now" in dry.stdout
    assert read_topic(broker.url, RAW) == []

    first = run_cli(["replay", "dlq"], env)
    assert first.returncode == 0, first.stderr
    assert "4 dead letters considered" in first.stdout
    assert "replayed 2 events that pass now (app 1, web 1)" in first.stdout
    assert "2 still fail" in first.stdout and "not_json 1" in first.stdout
    replayed = read_topic(broker.url, RAW)
    assert sorted(orjson.loads(r.value)["event_id"] for r in replayed) == sorted(
        e["event_id"] for e in fixed
    )
    assert {r.key for r in replayed} == {b"customer_id:cus-7", b"device_id:d-1"}

    again = run_cli(["replay", "dlq"], env)
    assert again.returncode == 0 and "nothing to replay" in again.stdout
    assert len(read_topic(broker.url, RAW)) == 2  # nothing sent twice

    unreachable = run_cli(["replay", "dlq"], {**env, "JW_BROKER_URL": "kafka://127.0.0.1:9"})
    assert unreachable.returncode == 1 and "cannot read the dead-letter topic" in unreachable.stderr
