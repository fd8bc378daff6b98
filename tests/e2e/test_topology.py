"""The streaming topology on a real broker: 2 workers, 4 partitions, a simulated day.

Events go in at ``touchpoints.raw`` as a producer would send them, paced (a simulated day in
about half a minute); journeys come out of ``journey.events`` / ``experience.moments``. What
comes out must be the simulator's ground truth exactly: every converted and dropped-off journey
with its stage, person and negative moments, once. Identity merges cross partitions (anonymous
browsing on a device's partition, the login on the customer's). ``run_day(chaos=True)`` kills
one worker with SIGKILL mid-stream and restarts it; that variant is not in the suite yet: it
still loses one loyalty-card alias across the fail-over for one seed
(docs/streaming-topology.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer, TopicPartition

from pipeline.contract import IDENTIFIER_FIELDS
from pipeline.scenario import DaySimulator, default_incidents
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.journeys import kafka_partition
from streams.offsets import confirmed_end_offsets, group_lag
from streams.topics import (
    BY_PERSON,
    EXPERIENCE_MOMENTS,
    HANDOFF,
    JOURNEY_EVENTS,
    RAW,
    ensure_topics,
)
from tests.helpers import (
    free_port,
    http_get,
    http_json,
    jw_env,
    metric_values,
    read_topic,
    start_cli,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

PARTITIONS = 4
SPEED = 3_000  # event time per wall time: a simulated day in about 30 s


def day_start() -> int:
    """Midnight 40 days ago: the whole day and every time-out lies in the past."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - timedelta(days=40)).timestamp() * 1000)


def truth_of(simulator: DaySimulator) -> Counter[tuple[object, ...]]:
    return Counter(
        (j.journey, j.person, j.outcome, j.stage, tuple(sorted(j.negative_moments)))
        for j in simulator.truth.journeys
    )


def found(bootstrap: str) -> tuple[Counter[tuple[object, ...]], list[dict[str, Any]]]:
    """Journey outcomes in the output topics, deduplicated by output id as a consumer would."""
    records = read_topic(bootstrap, JOURNEY_EVENTS) + read_topic(bootstrap, EXPERIENCE_MOMENTS)
    unique = {o["output_id"]: o for o in (orjson.loads(r.value) for r in records)}
    final: dict[str, dict[str, Any]] = {}
    moments: dict[str, list[str]] = {}
    for o in unique.values():
        if o["type"] == "journey" and o["name"] in ("converted", "dropped_off"):
            assert o["journey_id"] not in final, f"two outcomes for one journey: {o}"
            final[o["journey_id"]] = o
        elif o["type"] == "negative_moment" and o["journey_id"]:
            moments.setdefault(o["journey_id"], []).append(o["name"])
    outcomes = Counter(
        (o["journey"], o["person_id"], o["name"], o["stage"], tuple(sorted(moments.get(j, []))))
        for j, o in final.items()
    )
    return outcomes, list(unique.values())


def clock_events(at: int) -> list[dict[str, Any]]:
    """One event per partition that matches no journey: moves every watermark to ``at``."""
    events, covered = [], set()
    for n in range(1000):
        device = f"clock-{n}"
        partition = kafka_partition(f"device_id:{device}", PARTITIONS)
        if partition in covered:
            continue
        covered.add(partition)
        events.append(
            {
                "event_id": str(uuid.uuid4()),
                "occurred_at": datetime.fromtimestamp(at / 1000, UTC).isoformat(),
                "channel": "web",
                "touchpoint": "system.clock",
                "action": "tick",
                "device_id": device,
                "source": "test",
            }
        )
        if len(covered) == PARTITIONS:
            return events
    raise AssertionError("no device id for every partition")


def person_key(event: dict[str, Any]) -> bytes:
    """The key the collector gives an event: its strongest identifier."""
    name = next(n for n in IDENTIFIER_FIELDS if event.get(n))
    return f"{name}:{event[name]}".encode()


class Topology:
    def __init__(self, broker: EmbeddedBroker, tmp_path: Path) -> None:
        self.broker = broker
        self.tmp = tmp_path
        self.port = free_port()
        free_port()  # the second worker's port (port + 1) is checked when it starts
        self.status_port = free_port()
        self.chdb = tmp_path / "clickhouse"
        self.env = jw_env(
            broker_url=broker.url,
            worker_web_port=self.port,
            data_dir=tmp_path / "var",
            partitions=PARTITIONS,
            consumer_session_timeout_s=3,
            consumer_heartbeat_s=0.5,
            consumer_rebalance_timeout_s=3,
            pii_hash_key="test-key",
            status_port=self.status_port,
            clickhouse_dsn=f"chdb://{self.chdb}",
            sink_batch_seconds=0.2,
            # A day replayed in half a minute: a worker's fail-over (session time-out and
            # rebalance, several seconds) is hours of event time, during which its share of
            # the raw topic is not ingested. 12 hours of lateness keep that in order, as a
            # few seconds of lateness do at real-time speed (docs: allowed_lateness_s).
            allowed_lateness_s=12 * 3600,
        )
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.sink: subprocess.Popen[bytes] | None = None

    def start_sink(self) -> None:
        self.sink = start_cli(["sink"], self.env, self.tmp / "sink.log")

    def stats(self) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{self.status_port}/api/v1/stats") or {}

    def start(self, index: int) -> None:
        log = self.tmp / f"worker-{index}.log"
        self.workers[index] = start_cli(["worker", "--index", str(index)], self.env, log)

    def ready(self, index: int) -> bool:
        process = self.workers[index]
        if process.poll() is not None:
            log = (self.tmp / f"worker-{index}.log").read_text()[-3000:]
            raise AssertionError(f"worker {index} exited with {process.returncode}:\n{log}")
        return http_get(f"http://127.0.0.1:{self.port + index}/readyz")[0] == 200

    def owned(self, index: int) -> set[str]:
        body = http_json(f"http://127.0.0.1:{self.port + index}/readyz") or {}
        return {tp for tp in body.get("assigned_partitions", []) if tp.startswith(BY_PERSON)}

    def balanced(self) -> bool:
        """Both workers ready and the by_person partitions split between them."""
        if not all(self.ready(i) for i in self.workers):
            return False
        owned = [self.owned(i) for i in self.workers]
        return all(owned) and sum(len(o) for o in owned) == PARTITIONS

    def drained(self) -> bool:
        """Everything ingested, and every by_person and hand-off record processed."""
        if group_lag(self.broker.url, "journeywatch", [RAW]):
            return False
        processed: dict[tuple[str, str], float] = {}
        for index in self.workers:
            _, body = http_get(f"http://127.0.0.1:{self.port + index}/metrics")
            for labels, value in metric_values(body.decode(), "jw_journey_input_offset").items():
                key = (dict(labels)["topic"], dict(labels)["partition"])
                processed[key] = max(processed.get(key, 0), value)
        ends = confirmed_end_offsets(
            self.broker.url,
            [TopicPartition(t, p) for t in (BY_PERSON, HANDOFF) for p in range(PARTITIONS)],
        )
        return all(
            processed.get((tp.topic, str(tp.partition)), 0) >= end
            for tp, end in ends.items()
            if end
        )

    def stop(self) -> None:
        for process in self.workers.values():
            stop_process(process)
        if self.sink is not None:
            stop_process(self.sink)


def produce_day(
    bootstrap: str, events: list[dict[str, Any]], on_progress: Callable[[float], None]
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    first = int(datetime.fromisoformat(events[0]["occurred_at"]).timestamp() * 1000)
    wall_start = time.monotonic()
    for n, event in enumerate(events):
        at = int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)
        delay = (at - first) / SPEED / 1000 - (time.monotonic() - wall_start)
        if delay > 0.005:
            producer.flush()
            time.sleep(delay)  # pacing the input rate, not waiting for a result
        producer.send(RAW, orjson.dumps(event), key=person_key(event))
        on_progress((n + 1) / len(events))
    producer.flush()
    producer.close()


def run_day(
    broker: EmbeddedBroker, tmp_path: Path, seed: int, chaos: bool, sink: bool = False
) -> tuple[Counter[tuple[object, ...]], Counter[tuple[object, ...]], list[dict[str, Any]]]:
    start = day_start()
    simulator = DaySimulator(seed, start, 500, default_incidents(start))
    events = simulator.generate()
    ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
    topology = Topology(broker, tmp_path)
    killed: list[bool] = []

    def chaos_monkey(progress: float) -> None:
        if chaos and progress >= 0.4 and not killed:
            os.kill(topology.workers[1].pid, signal.SIGKILL)
            topology.workers[1].wait()
            killed.append(True)
            topology.start(1)
            # The producer waits out the fail-over: replayed 3,000 times faster than real
            # time, its seconds would be hours of event time, and a customer's next step
            # would overtake the identity hand-off it depends on; live, it is seconds.
            wait_until(topology.balanced, 120, "the restarted worker back in the group", 0.5)

    try:
        if sink:
            topology.start_sink()
        topology.start(0)
        topology.start(1)
        wait_until(topology.balanced, 120, "two workers sharing the partitions", 0.5)
        produce_day(broker.url, events, chaos_monkey)
        # Only then move every watermark past every deadline: a clock event must not overtake
        # a touchpoint still on its way from another partition.
        wait_until(topology.drained, 120, "every touchpoint and hand-off processed", 0.5)
        producer = KafkaProducer(bootstrap_servers=broker.url)
        now = int(time.time() * 1000) - 60_000
        for event in clock_events(now):
            producer.send(RAW, orjson.dumps(event), key=person_key(event))
        producer.close()
        truth = truth_of(simulator)

        def settled() -> bool:
            outcomes, _ = found(broker.url)
            return outcomes == truth and group_lag(broker.url, "journeywatch", [HANDOFF]) == 0

        # A time-out is reported by the comparison below, with the difference.
        with contextlib.suppress(AssertionError):
            wait_until(settled, 180, "the outputs to equal the ground truth", 1.0)
        outcomes, outputs = found(broker.url)
        if sink:
            # the sink wrote every journey outcome to ClickHouse, each once
            expected = Counter(key[2] for key in truth.elements())

            def written() -> bool:
                by_name = topology.stats().get("journey_events_by_name", {})
                return all(by_name.get(name) == n for name, n in expected.items())

            wait_until(written, 60, f"ClickHouse journey_events to hold {dict(expected)}", 0.5)
        if chaos:
            assert killed and topology.workers[1].poll() is None
        return outcomes, truth, outputs
    finally:
        topology.stop()


def test_two_workers_find_the_ground_truth_of_a_day(broker: EmbeddedBroker, tmp_path: Path) -> None:
    outcomes, truth, outputs = run_day(broker, tmp_path, seed=31, chaos=False, sink=True)
    assert outcomes == truth, (outcomes - truth, truth - outcomes)
    merges = [o for o in outputs if o["type"] == "identity" and o["name"] == "merged"]
    crossed = [
        o
        for o in merges
        if kafka_partition(o["detail"]["from_person"][2:], PARTITIONS)
        != kafka_partition("customer_id:" + o["person_id"][2:], PARTITIONS)
    ]
    assert crossed, "no identity merge crossed partitions: the test would prove nothing"
