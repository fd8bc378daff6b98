"""``journeywatch replay raw`` against a running worker and sink: raw events the ingest skipped
(its group's offsets moved past them, as by a careless reset) are sent again, once; events
already in ClickHouse are left alone; a second run sends nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.offsets import confirmed_end_offsets, group_lag
from streams.topics import BY_PERSON, RAW, ensure_topics
from tests.e2e.stack import PARTITIONS, Topology, person_key
from tests.helpers import http_get, run_cli, wait_until

pytestmark = pytest.mark.e2e


def events(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC).isoformat(),
            "channel": "web",
            "touchpoint": "product.view",
            "action": "view",
            "device_id": f"{tag}-{i}",
        }
        for i in range(n)
    ]


def produce(bootstrap: str, batch: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for event in batch:
        producer.send(RAW, orjson.dumps(event), key=person_key(event))
    producer.flush()
    producer.close()


def caught_up(bootstrap: str) -> bool:
    return not group_lag(bootstrap, "journeywatch", [RAW]) and not group_lag(
        bootstrap, "journeywatch-sink", [BY_PERSON]
    )


def test_replay_raw_sends_again_only_what_never_reached_clickhouse(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
    skipped = events(12, "skipped")
    produce(broker.url, skipped)
    # the ingest's consumer group is moved past them before any worker reads them
    partitions = [TopicPartition(RAW, p) for p in range(PARTITIONS)]
    ends = confirmed_end_offsets(broker.url, partitions)
    mover = KafkaConsumer(bootstrap_servers=broker.url, group_id="journeywatch")
    mover.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
    mover.close()

    topology = Topology(broker, tmp_path, allowed_lateness_s=1)
    base = f"http://127.0.0.1:{topology.status_port}"
    try:
        topology.start(0)
        topology.start_sink()
        wait_until(lambda: topology.ready(0), 120, "the worker")
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "the sink")
        seen = events(8, "seen")
        produce(broker.url, seen)
        wait_until(lambda: topology.stats().get("touchpoints") == 8, 60, "8 touchpoints stored")
        wait_until(lambda: caught_up(broker.url), 60, "ingest and sink committed everything")

        dry = run_cli(["replay", "raw", "--since", "1h", "--api", base, "--dry-run"], topology.env)
        assert dry.returncode == 0, dry.stderr
        assert "20 records of touchpoints.raw in the range" in dry.stdout
        assert "8 already stored" in dry.stdout and "would send again 12" in dry.stdout

        first = run_cli(["replay", "raw", "--since", "1h", "--api", base], topology.env)
        assert first.returncode == 0, first.stderr
        assert "sent again 12 that never reached ClickHouse" in first.stdout
        wait_until(lambda: topology.stats().get("touchpoints") == 20, 60, "20 touchpoints")

        wait_until(lambda: caught_up(broker.url), 60, "the replayed events committed")
        second = run_cli(["replay", "raw", "--since", "1h", "--api", base], topology.env)
        assert second.returncode == 0, second.stderr
        assert "32 records" in second.stdout  # the range now holds the resent 12 as well
        assert "sent again 0" in second.stdout
        assert topology.stats().get("touchpoints") == 20  # each event once

        bad = run_cli(["replay", "raw", "--since", "yesterday-ish", "--api", base], topology.env)
        assert bad.returncode == 2 and "not a time" in bad.stderr
    finally:
        topology.stop()
