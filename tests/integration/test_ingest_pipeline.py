"""The walking skeleton end to end: kafka-python producer → broker → Faust ingest worker →
ClickHouse sink, with about 1% malformed input in varied ways."""

from __future__ import annotations

import random
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from pipeline.contract import RejectReason
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.offsets import group_lag
from streams.topics import BY_PERSON, DLQ, RAW, ensure_topics
from tests.helpers import (
    free_port,
    http_get,
    http_json,
    jw_env,
    metric_values,
    query_chdb,
    read_topic,
    start_cli,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.integration

RAW_EMAIL = "jane.doe@example.com"


def ready(port: int, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"process {process.args!r} exited with {process.returncode}"
    return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def valid_event(rng: random.Random, now: datetime) -> dict[str, Any]:
    channel = rng.choice(["web", "app", "call_center", "store", "chat"])
    event: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "occurred_at": (now - timedelta(seconds=rng.randint(0, 3600))).isoformat(),
        "channel": channel,
        "touchpoint": rng.choice(["home.view", "cart.add", "checkout.payment", "queue.wait"]),
        "action": "view",
        "customer_id": f"c{rng.randint(1, 2000)}",
    }
    if rng.random() < 0.2:
        event["outcome"], event["outcome_reason"] = "error", "payment_declined"
    if rng.random() < 0.1:
        event["csat"] = rng.randint(1, 5)
    if rng.random() < 0.05:  # produced without the collector: the ingest redacts it
        event["attributes"] = {"note": f"mail {RAW_EMAIL} or call +44 20 7946 0958"}
    return event


def malformed(kind: int, rng: random.Random, now: datetime) -> tuple[bytes, str]:
    """One malformed record of the given kind and the reason the pipeline must give."""
    good = valid_event(rng, now)
    cases: list[tuple[Any, str]] = [
        (b"{not json", "not_json"),
        (b'["an", "array"]', "not_an_object"),
        ({k: v for k, v in good.items() if k != "event_id"}, "missing_field"),
        ({**good, "customer_id": None}, "missing_identifier"),
        ({k: v for k, v in good.items() if k != "customer_id"}, "missing_identifier"),
        ({**good, "channel": "carrier_pigeon"}, "invalid_field"),
        ({**good, "occurred_at": "2026-01-01T10:00:00"}, "invalid_field"),
        ({**good, "occurred_at": (now + timedelta(hours=2)).isoformat()}, "future_event"),
        ({**good, "coupon_code": "SAVE10"}, "unknown_field"),
        ({**good, "outcome": "error", "rating": 3}, "unknown_field"),
        ({**good, "csat": 11}, "invalid_field"),
        ({**good, "email_hash": RAW_EMAIL, "note": "x"}, "invalid_field"),
        ({**good, "email_hash": RAW_EMAIL}, "invalid_field"),
        ({**good, "attributes": {"blob": "x" * 70_000}}, "too_large"),
        ({**good, "schema_version": 9}, "unsupported_version"),
        ({**good, "occurred_at": "1970-01-01T00:00:00Z"}, "too_old"),
        (orjson.dumps(good)[:-1] + b',"attributes":{"n":1' + b"0" * 30 + b"}}", "invalid_field"),
    ]
    payload, reason = cases[kind % len(cases)]
    return (payload if isinstance(payload, bytes) else orjson.dumps(payload)), reason


def test_ten_thousand_events_land_exactly_once_with_every_failure_explained(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    status_port, worker_port = free_port(), free_port()
    chdb_dir = tmp_path / "clickhouse"
    env = jw_env(
        broker_url=broker.url,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        status_port=status_port,
        worker_web_port=worker_port,
        data_dir=tmp_path / "var",
        partitions=4,
        consumer_session_timeout_s=3,
        consumer_fetch_max_wait_ms=25,
        consumer_heartbeat_s=0.5,
        consumer_rebalance_timeout_s=3,
        pii_hash_key="test-key",
        sink_batch_seconds=0.2,
    )
    ensure_topics(Settings(broker_url=broker.url, partitions=4))
    sink = start_cli(["sink"], env, tmp_path / "sink.log")
    worker = start_cli(["worker"], env, tmp_path / "worker.log")
    try:
        for port, process in ((status_port, sink), (worker_port, worker)):
            wait_until(partial(ready, port, process), 90, f"/readyz on port {port}")

        # One worker owns every partition of the raw topic, and says so on /readyz.
        readyz = http_json(f"http://127.0.0.1:{worker_port}/readyz")
        assert {tp for tp in readyz["assigned_partitions"] if tp.startswith(RAW)} == {
            f"{RAW}:{p}" for p in range(4)
        }

        rng = random.Random(42)
        now = datetime.now(UTC)
        producer = KafkaProducer(
            bootstrap_servers=broker.url, linger_ms=5, max_request_size=1_000_000
        )
        valid_ids: set[str] = set()
        expected_reasons: Counter[str] = Counter()
        expected_channels: Counter[str] = Counter()
        for i in range(10_000):
            if i % 100 == 37:
                payload, reason = malformed(i // 100, rng, now)
                expected_reasons[reason] += 1
            else:
                event = valid_event(rng, now)
                valid_ids.add(event["event_id"])
                expected_channels[event["channel"]] += 1
                payload = orjson.dumps(event)
            producer.send(RAW, value=payload)
        producer.flush()
        producer.close()
        invalid = sum(expected_reasons.values())
        assert (len(valid_ids), invalid) == (9_900, 100)
        # every kind of failure is represented
        assert set(expected_reasons) == {r.value for r in RejectReason}

        stats_url = f"http://127.0.0.1:{status_port}/api/v1/stats"

        def drained() -> bool:
            stats = http_json(stats_url) or {"touchpoints": 0, "failed_events": 0}
            assert stats["touchpoints"] <= 9_900 and stats["failed_events"] <= 100, stats
            return (
                (stats["touchpoints"], stats["failed_events"]) == (9_900, 100)
                and group_lag(broker.url, "journeywatch", [RAW]) == 0
                and group_lag(broker.url, "journeywatch-sink", [BY_PERSON, DLQ]) == 0
            )

        wait_until(drained, 180, "ClickHouse to hold every event and all offsets committed", 0.5)
        stats = http_json(stats_url)
        assert stats["touchpoints_by_channel"] == dict(expected_channels)
        assert stats["failed_events_by_reason"] == dict(expected_reasons)

        # The dead-letter topic: one record per invalid event, the reason in its headers.
        dead = read_topic(broker.url, DLQ)
        assert len(dead) == 100
        reasons = Counter(dict(r.headers)["jw.error.reason"].decode() for r in dead)
        assert reasons == expected_reasons
        assert all(dict(r.headers)["jw.error.detail"] for r in dead)
        assert not any(RAW_EMAIL.encode() in (r.value or b"") for r in dead)

        # The same figures on the worker's /metrics.
        _, body = http_get(f"http://127.0.0.1:{worker_port}/metrics")
        text = body.decode()
        accepted = metric_values(text, "jw_events_accepted_total")
        rejected = metric_values(text, "jw_events_rejected_total")
        assert {dict(k)["channel"]: v for k, v in accepted.items()} == dict(expected_channels)
        by_reason: Counter[str] = Counter()
        for labels, value in rejected.items():
            by_reason[dict(labels)["reason"]] += int(value)
        assert by_reason == expected_reasons
    finally:
        stop_process(worker)
        stop_process(sink)

    # With the sink stopped, look inside its ClickHouse directly: every valid event once.
    ids = query_chdb(chdb_dir, "SELECT event_id FROM journeywatch.touchpoints")
    assert len(ids) == 9_900 and {row[0] for row in ids} == valid_ids
    failed = query_chdb(
        chdb_dir,
        "SELECT count(), countIf(reason = ''), countIf(position(raw, 'jane.doe') > 0) "
        "FROM journeywatch.failed_events",
    )
    assert failed == [[100, 0, 0]]
    redacted = query_chdb(
        chdb_dir,
        "SELECT countIf(position(attributes, 'jane.doe') > 0 OR position(attributes, '7946') > 0),"
        ' countIf(attributes = \'{"note":"mail [redacted-email] or call [redacted-phone]"}\')'
        " FROM journeywatch.touchpoints",
    )
    assert redacted[0][0] == 0 and redacted[0][1] > 300, redacted
