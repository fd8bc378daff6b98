"""The journey agent's error policy on a real broker: records that make it raise go to
``journeys.dlq`` with their reason, and every other record is processed as if they were not
there (streams/journeys.py, "the error policy").

One worker owns the 4 partitions. Before it starts, poison is waiting for it: hand-off messages
that are not valid messages, a forwarded touchpoint the engine raises on only once the
watermark releases it (hours of event time later, in the middle of the day), an undecodable
record on the validated topic, and corrupt journey state records in the table's changelog.
Then a simulated day goes in at the raw topic: its journey outcomes must be exactly the
simulator's ground truth, and the worker must still be running. The sink stores the dead
letters in the ClickHouse table ``journey_errors``.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from pipeline import deadletter as dl
from pipeline.scenario import DaySimulator, default_incidents
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.offsets import group_lag
from streams.topics import (
    BY_PERSON,
    HANDOFF,
    JOURNEY_STATE_TABLE,
    JOURNEYS_DLQ,
    RAW,
    changelog_topic,
    ensure_topics,
    kafka_partition,
)
from tests.e2e.stack import PARTITIONS, Topology, clock_events, day_start, person_key, produce_day
from tests.e2e.test_topology import found, truth_of
from tests.helpers import http_get, metric_values, query_chdb, read_topic, wait_until

pytestmark = pytest.mark.integration

SPEED = 6_000  # a simulated day in about 15 s
CHANGELOG = changelog_topic("journeywatch", JOURNEY_STATE_TABLE)


def poison_touch(event_id: str, at: int) -> list[Any]:
    """A touch as hand-off messages carry it, with no touchpoint name: the engine accepts it
    and holds it for the watermark, and raises when it applies it (matching the stages)."""
    return [event_id, at, "web", None, "view", "ok", None, [["customer_id", "poison"]]] + [None] * 9


def poison(start: int) -> list[tuple[str, int, bytes, bytes]]:
    """(topic, partition, key, value) of the records that must end in journeys.dlq."""
    home = kafka_partition("customer_id:poison", PARTITIONS)
    forward = {
        "kind": "forward",
        "person": "c:poison",
        "touch": poison_touch("p-1", start + 2 * 3_600_000),
    }
    return [
        (HANDOFF, 0, b"device_id:x", b"{not a message"),
        (HANDOFF, 1, b"device_id:y", b'{"kind": "handoff", "person": "c:nobody"}'),
        (HANDOFF, 2, b"device_id:z", b'{"kind": "teleport"}'),
        (HANDOFF, home, b"customer_id:poison", orjson.dumps(forward)),
        (BY_PERSON, 3, b"customer_id:q", b"\xff\xfe not an event"),
    ]


def corrupt_state() -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of journey state records that cannot be loaded."""
    return [
        (0, b"0|p:c:ghost", b"\xff not json"),
        (1, b"1|i:device_id:ghost", b"[null, 2, false]"),  # customers seen: not a list
    ]


def test_a_worker_dead_letters_what_raises_and_finds_the_truth_for_the_rest(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    start = day_start()
    simulator = DaySimulator(7, start, 150, default_incidents(start))
    events = simulator.generate()
    ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
    producer = KafkaProducer(bootstrap_servers=broker.url)
    bad = poison(start)
    sent = [producer.send(topic, value, key=key, partition=p) for topic, p, key, value in bad]
    for partition, key, value in corrupt_state():
        sent.append(producer.send(CHANGELOG, value, key=key, partition=partition))
    # each one stored (a send's failure is only in its future), at the offset its letter names
    stored_at = [future.get(timeout=30).offset for future in sent]
    topology = Topology(broker, tmp_path)
    try:
        topology.start_sink()
        topology.start(0)
        wait_until(topology.balanced, 120, "the worker owning every partition", 0.5)
        produce_day(broker.url, events, SPEED)
        wait_until(topology.drained, 120, "every touchpoint and hand-off processed", 0.5)
        now = int(time.time() * 1000) - 60_000
        for event in clock_events(now):
            producer.send(RAW, orjson.dumps(event), key=person_key(event))
        producer.flush()
        truth = truth_of(simulator)

        def settled() -> bool:
            outcomes, _ = found(broker.url)
            return outcomes == truth and group_lag(broker.url, "journeywatch", [HANDOFF]) == 0

        with contextlib.suppress(AssertionError):  # the comparison below shows the difference
            wait_until(settled, 120, "the outputs to equal the ground truth", 1.0)
        outcomes, _ = found(broker.url)
        assert outcomes == truth, (outcomes - truth, truth - outcomes)
        assert topology.workers[0].poll() is None, "the worker is still running"

        letters = read_topic(broker.url, JOURNEYS_DLQ)
        by_value = {record.value: dict(record.headers) for record in letters}
        for (topic, partition, _, value), offset in zip(bad, stored_at, strict=False):
            assert value in by_value, f"{value!r} not in journeys.dlq"
            headers = {k: v.decode() for k, v in by_value[value].items()}
            assert headers[dl.ORIGINAL_TOPIC] == topic
            assert headers[dl.ORIGINAL_PARTITION] == str(partition)
            assert int(headers[dl.ORIGINAL_OFFSET]) == offset
            assert headers[dl.REASON] and headers[dl.STACK], headers
        reasons = {
            value: {k: v.decode() for k, v in by_value[value].items()}[dl.REASON]
            for _, _, _, value in bad
        }
        assert reasons[b"{not a message"] == "JSONDecodeError"
        assert reasons[b'{"kind": "handoff", "person": "c:nobody"}'] == "KeyError"
        assert reasons[b'{"kind": "teleport"}'] == "ValueError"
        # the forwarded touch raised when the watermark released it, hours of event time later
        # (while another record was being applied): the engine named it, its carrier went
        assert reasons[bad[3][3]] in ("TypeError", "AttributeError")
        for _, key, value in corrupt_state():
            assert value in by_value, f"state record {key!r} not in journeys.dlq"
            headers = {k: v.decode() for k, v in by_value[value].items()}
            assert headers[dl.KIND] == "state" and headers[dl.ORIGINAL_TOPIC] == CHANGELOG

        _, body = http_get(f"http://127.0.0.1:{topology.port}/metrics")
        errors = {
            dict(labels)["kind"]: value
            for labels, value in metric_values(body.decode(), "jw_journey_errors_total").items()
        }
        assert errors == {"touchpoint": 2.0, "handoff": 3.0, "state": 2.0}, errors
        assert datetime.now(UTC) > datetime.fromtimestamp(start / 1000, UTC)

        def stored() -> bool:
            _, body = http_get(f"http://127.0.0.1:{topology.status_port}/metrics")
            rows = metric_values(body.decode(), "jw_sink_rows_written_total")
            return rows.get((("table", "journey_errors"),), 0) >= len(letters)

        wait_until(stored, 60, "the sink to store journeys.dlq in journey_errors", 0.5)
        # the status API counts them too, by kind
        stats = topology.stats()
        assert stats["journey_errors_by_kind"] == {"touchpoint": 2, "handoff": 3, "state": 2}
        assert stats["journey_errors"] == 7
    finally:
        producer.close()
        topology.stop()
    database = Settings().clickhouse_database
    rows = query_chdb(
        topology.chdb,
        "SELECT kind, reason, original_topic, original_partition, original_offset, value, stack "
        f"FROM {database}.journey_errors",
    )
    table = {row[5]: row for row in rows}
    for (topic, partition, _, value), at in zip(bad, stored_at, strict=False):
        kind, reason, original_topic, original_partition, offset, _, stack = table[
            value.decode("utf-8", errors="replace")
        ]
        assert (original_topic, original_partition, offset) == (topic, partition, at)
        assert reason == reasons[value] and stack
        assert kind == ("handoff" if topic == HANDOFF and value != bad[3][3] else "touchpoint")
    kinds = sorted(row[0] for row in rows)
    assert kinds == ["handoff"] * 3 + ["state"] * 2 + ["touchpoint"] * 2, kinds
