"""A journeywatch stack for end-to-end tests: workers on a real broker, fed at a chosen pace.

Shared by the topology and the alerting tests.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer, TopicPartition

from pipeline.contract import IDENTIFIER_FIELDS
from streams.broker import EmbeddedBroker
from streams.offsets import committed_offsets, confirmed_end_offsets, group_lag
from streams.topics import BY_PERSON, HANDOFF, RAW, kafka_partition
from tests.helpers import (
    free_port,
    http_get,
    http_json,
    jw_env,
    metric_values,
    released_env,
    start_cli,
    stop_process,
    wait_until,
)

PARTITIONS = 4
COLLECTOR_KEY = "test-collector-key-0123456789"


def day_start() -> int:
    """Midnight 40 days ago: the whole day and every time-out lies in the past."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - timedelta(days=40)).timestamp() * 1000)


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
    """Workers (and a sink) as ``journeywatch`` processes; ``settings`` override the defaults."""

    def __init__(self, broker: EmbeddedBroker, tmp_path: Path, **settings: object) -> None:
        self.broker = broker
        self.tmp = tmp_path
        self.port = free_port(span=3)  # worker i serves on port + i
        self.status_port = free_port()
        self.collector_port = free_port()
        self.chdb = tmp_path / "clickhouse"
        defaults: dict[str, object] = {
            # A day replayed in half a minute: a worker's fail-over (session time-out and
            # rebalance, several seconds) is hours of event time, during which its share of
            # the raw topic is not ingested. 12 hours of lateness keep that in order, as a
            # few seconds of lateness do at real-time speed (docs: allowed_lateness_s).
            "allowed_lateness_s": 12 * 3600,
        }
        self.env = jw_env(
            broker_url=broker.url,
            worker_web_port=self.port,
            data_dir=tmp_path / "var",
            partitions=PARTITIONS,
            consumer_session_timeout_s=3,
            consumer_fetch_max_wait_ms=25,
            consumer_heartbeat_s=0.5,
            consumer_rebalance_timeout_s=3,
            pii_hash_key="test-key",
            status_port=self.status_port,
            clickhouse_dsn=f"chdb://{self.chdb}",
            sink_batch_seconds=0.2,
            collector_port=self.collector_port,
            collector_api_keys=orjson.dumps({"test": {"key": COLLECTOR_KEY}}).decode(),
            **(defaults | settings),
        )
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.retired: dict[int, int] = {}  # workers stopped on purpose: their exit status
        self.sink: subprocess.Popen[bytes] | None = None
        self.collector: subprocess.Popen[bytes] | None = None

    def start_collector(self) -> None:
        self.collector = start_cli(["collector"], self.env, self.tmp / "collector.log")
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{self.collector_port}/readyz")[0] == 200,
            60,
            "the collector",
        )

    def post(self, events: list[dict[str, Any]]) -> int:
        """POST ``events`` to the collector; its HTTP status."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.collector_port}/v1/events",
            data=orjson.dumps(events),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {COLLECTOR_KEY}",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def start_sink(self) -> None:
        self.sink = start_cli(["sink"], self.env, self.tmp / "sink.log")

    def start_all(self) -> None:
        """The sink, the collector and worker 0, each ready: the stack an HTTP client sees."""
        self.start_sink()
        self.start_collector()
        self.start(0)
        wait_until(lambda: self.ready(0), 90, "the worker")
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{self.status_port}/readyz")[0] == 200,
            90,
            "the sink",
        )

    def stats(self) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{self.status_port}/api/v1/stats") or {}

    def start(
        self, index: int, code: Path | None = None, settings: dict[str, object] | None = None
    ) -> None:
        """Start worker ``index``: this checkout's code, or (``code``) another checkout's (a
        released version, plain Python); ``settings`` override this topology's."""
        log = self.tmp / f"worker-{index}.log"
        env = self.env | {f"JW_{k.upper()}": str(v) for k, v in (settings or {}).items()}
        args = ["worker", "--index", str(index)]
        if code is None:
            self.workers[index] = start_cli(args, env, log)
        else:
            self.workers[index] = start_cli(args, released_env(env), log, cwd=code)

    def retire(self, index: int) -> None:
        """Stop worker ``index`` as an operator scaling in would (SIGTERM)."""
        self.retired[index] = stop_process(self.workers.pop(index))

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
        """Everything ingested, and every by_person and hand-off record processed: by a worker
        running now, or committed (by one that has stopped since)."""
        if group_lag(self.broker.url, "journeywatch", [RAW]):
            return False
        processed: dict[tuple[str, str], float] = {
            (tp.topic, str(tp.partition)): offset
            for tp, offset in committed_offsets(self.broker.url, "journeywatch").items()
        }
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
        for service in (self.sink, self.collector):
            if service is not None:
                stop_process(service)


def produce_day(
    bootstrap: str,
    events: list[dict[str, Any]],
    speed: float,
    on_progress: Callable[[float], None] = lambda _: None,
) -> None:
    """Produce ``events`` to the raw topic as the collector would, ``speed`` times faster than
    their event times."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    first = int(datetime.fromisoformat(events[0]["occurred_at"]).timestamp() * 1000)
    wall_start = time.monotonic()
    for n, event in enumerate(events):
        at = int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)
        delay = (at - first) / speed / 1000 - (time.monotonic() - wall_start)
        if delay > 0.005:
            producer.flush()
            time.sleep(delay)  # pacing the input rate, not waiting for a result
        producer.send(RAW, orjson.dumps(event), key=person_key(event))
        on_progress((n + 1) / len(events))
    producer.flush()
    producer.close()
