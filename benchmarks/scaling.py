"""Scale-out on one machine: ingest throughput with one and with two worker processes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psutil
from kafka import KafkaProducer

from benchmarks._support import free_port, stop, worker_env
from pipeline.settings import Settings
from pipeline.simulator import SimpleTrafficSource
from streams.broker import EmbeddedBroker
from streams.offsets import group_lag
from streams.topics import RAW, ensure_topics

EVENTS = 30_000
PARTITIONS = 4
REPEATS = 2  # best of: the machine is noisy


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _assignment_settled(ports: list[int]) -> bool:
    """Every raw partition is assigned to exactly one worker, and every worker has some."""
    owned: list[str] = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                mine = [
                    tp
                    for tp in orjson.loads(response.read())["assigned_partitions"]
                    if tp.startswith(RAW)
                ]
        except OSError:
            return False
        if not mine:
            return False
        owned += mine
    return sorted(owned) == sorted(f"{RAW}:{p}" for p in range(PARTITIONS))


def _measure(workers: int, payloads: list[bytes]) -> tuple[float, float]:
    """Events/s through ``workers`` ingest workers, and the largest worker's RSS in MiB."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(free_port(), Path(tmp) / "b.log") as broker,
    ):
        ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
        env = worker_env(broker.url, tmp, PARTITIONS)
        base = free_port(span=workers)
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--index", str(i)],
                env={**env, "JW_WORKER_WEB_PORT": str(base)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        try:
            deadline = time.monotonic() + 120
            while not all(_ready(base + i) for i in range(workers)):
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not become ready")
                time.sleep(0.2)
            while not _assignment_settled([base + i for i in range(workers)]):
                if time.monotonic() > deadline:
                    raise RuntimeError("the consumer group did not settle")
                time.sleep(0.2)
            producer = KafkaProducer(
                bootstrap_servers=broker.url, linger_ms=5, batch_size=256 * 1024
            )
            started = time.perf_counter()
            for payload in payloads:
                producer.send(RAW, value=payload)
            producer.flush()
            while group_lag(broker.url, "journeywatch", [RAW]) > 0:
                time.sleep(0.1)
            rate = len(payloads) / (time.perf_counter() - started)
            rss = max(psutil.Process(p.pid).memory_info().rss for p in processes) / 2**20
            return rate, rss
        finally:
            stop(processes)


def run() -> str:
    now = datetime.now(UTC)
    payloads = [orjson.dumps(e) for e in SimpleTrafficSource(seed=9).events(now, EVENTS)]
    one, rss_one = max(_measure(1, payloads) for _ in range(REPEATS))
    two, rss_two = max(_measure(2, payloads) for _ in range(REPEATS))
    return (
        "## Scale-out: one and two worker processes\n\n"
        f"Command: `make bench` (suite `benchmarks/scaling.py`): {EVENTS:,} events produced to "
        f"`touchpoints.raw` ({PARTITIONS} partitions) on the embedded broker, timed from the "
        "first send until the ingest group has committed every offset; the workers run the "
        "ingest agent (validation, dead letters) and the journey agent (which has nothing to "
        "do until ingest feeds it). Best of 2 runs each. The broker, the producer and the "
        "workers share the machine's "
        "2 cores, so two workers cannot double the rate here; on separate cores they would "
        "come closer.\n\n"
        "| workers | events/s | ratio to one worker | resident memory per worker |\n"
        "| ---: | ---: | ---: | ---: |\n"
        f"| 1 | {one:,.0f} | 1.00 | {rss_one:.0f} MiB |\n"
        f"| 2 | {two:,.0f} | {two / one:.2f} | {rss_two:.0f} MiB |\n"
    )
