"""The streaming topology: throughput against the broker client and two baselines (the bare
I/O a journey worker must do, Quix Streams), latency, drop-off delay, memory with a million
active journeys.

``JW_BENCH_TOPOLOGY_PARTS=throughput`` (a comma-separated choice of ``throughput``, ``steady``,
``memory``; all by default) runs only those parts, while iterating.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaProducer

from benchmarks._steady import (
    FETCH_MAX_WAIT_MS,
    HEARTBEAT_MS,
    PAD,
    REBALANCE_TIMEOUT_MS,
    SESSION_TIMEOUT_MS,
    SteadyMiddle,
)
from benchmarks._support import free_port, running, start_python, stop, worker_env
from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.settings import PRODUCER_MAX_BATCH_BYTES, Settings
from pipeline.shard import JourneyShard
from pipeline.simulator import SimpleTrafficSource
from streams.batching import BatchSender
from streams.broker import EmbeddedBroker
from streams.journeys import touch_of
from streams.process import GC_THRESHOLDS
from streams.topics import BY_PERSON, RAW, ensure_topics, kafka_partition, partition_hash
from tests.e2e.stack import person_key
from tests.helpers import wait_until

EVENTS = 100_000
PARTITIONS = 4
STEADY_RATE = 5_000
STEADY_SECONDS = 20
JOURNEYS = 1_000_000
REPO = Path(__file__).resolve().parent.parent
DEFAULTS = REPO / "pipeline" / "defaults" / "journeys.yaml"
PARTS = ("throughput", "steady", "memory")
# Quix Streams pins its own dependencies (confluent-kafka, rocksdict, pydantic-settings ...):
# it gets a virtual environment of its own, made on demand.
QUIX_VENV = REPO / ".venv-quix"
QUIX_VERSION = "3.28.1"  # the release measured in docs/benchmarks.md: pinned, as ours are
QUIX_REQUIREMENT = f"quixstreams=={QUIX_VERSION}"
BARE_OUTPUT = "bench.bare-io.out"
QUIX_OUTPUT = "bench.quix.out"


def _validated(now: datetime, count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``count`` validated events, one per millisecond of event time, ending at ``now``: a
    backlog, so that the watermark advances with the data as it would in a catch-up."""
    records = []
    source = SimpleTrafficSource(seed=seed)
    first = now - timedelta(milliseconds=count)
    for i in range(count):
        event = source.next_event(first + timedelta(milliseconds=i))
        decoded = decode_touchpoint(orjson.dumps(event), now)
        assert isinstance(decoded, TouchpointEvent)
        records.append((decoded.person_key().encode(), decoded.to_json()))
    return records


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return bytes(response.read())
    except OSError:
        return b""


def _metric_sum(port: int, name: str, label_filter: str = "") -> float:
    """The sum of a metric's samples (those with ``label_filter``), from /metrics asked for
    that metric alone (``name[]``): the whole page, read 4 times a second, cost the worker
    about a sixth of its CPU (py-spy), a cost Prometheus's read every 15 s does not have."""
    total = 0.0
    family = name.rstrip("{")
    page = _get(f"http://127.0.0.1:{port}/metrics?name[]={family}")
    for line in page.decode().splitlines():
        if line.startswith(name) and label_filter in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _histogram(ports: list[int], name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, summed over processes."""
    buckets: dict[float, float] = {}
    for port in ports:
        for line in _get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
            match = re.match(rf'{name}_bucket\{{.*le="([^"]+)".*\}} (\S+)', line)
            if match:
                bound = float(match.group(1))
                buckets[bound] = buckets.get(bound, 0.0) + float(match.group(2))
    return buckets


def _since(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def _quantiles(buckets: dict[float, float], quantiles: tuple[float, ...]) -> list[float]:
    """Quantiles from cumulative buckets (linear within a bucket)."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return [float("nan")] * len(quantiles)
    found = []
    for q in quantiles:
        rank, lower, below = q * total, 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= rank:
                if bound == float("inf"):
                    found.append(lower)
                else:
                    share = (rank - below) / max(buckets[bound] - below, 1e-9)
                    found.append(lower + (bound - lower) * share)
                break
            lower, below = bound, buckets[bound]
    return found


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # 503 (not ready) included
        return False


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


async def _raw_rate(bootstrap: str, topic: str, count: int) -> float:
    """Records/s of consuming ``topic`` (no consumer group) and decoding each record; a
    record is done when decoded."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        steady, seen = SteadyMiddle(count), 0
        while seen < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=5_000)
            for records in batches.values():
                for record in records:
                    orjson.loads(record.value)
                seen += len(records)
            steady.done(seen)
        return steady.rate()
    finally:
        await consumer.stop()


async def _bare_io_rate(bootstrap: str, topic: str, output: str, count: int, group: str) -> float:
    """Inputs/s of the I/O a journey worker must do, done bare with aiokafka in one process:
    consume ``topic`` in consumer group ``group``, decode each record, produce three ~250-byte
    records per input as record batches (one or more per partition per fetch, to the input's
    partition of ``output``), await the acknowledgements once per fetch, then commit the
    consumed offsets. An input is done when its fetch's offsets are committed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,  # the embedded profile's (benchmarks/_steady.py)
        heartbeat_interval_ms=HEARTBEAT_MS,
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=PRODUCER_MAX_BATCH_BYTES,  # as the worker's (JW_PRODUCER_MAX_BATCH_BYTES)
    )
    await producer.start()
    await consumer.start()
    try:
        steady, done = SteadyMiddle(count), 0
        while done < count:
            fetched = await consumer.getmany(timeout_ms=500)
            acknowledgements = []
            for tp, records in fetched.items():
                batch = producer.create_batch()
                for record in records:
                    event = orjson.loads(record.value)
                    for number in range(3):
                        value = orjson.dumps(
                            {
                                "event_id": event["event_id"],
                                "occurred_at": event["occurred_at"],
                                "touchpoint": event["touchpoint"],
                                "output": number,
                                "pad": PAD,
                            }
                        )
                        if batch.append(key=record.key, value=value, timestamp=None) is None:
                            batch.close()  # full: send it, start the next one
                            acknowledgements.append(
                                await producer.send_batch(batch, output, partition=tp.partition)
                            )
                            batch = producer.create_batch()
                            batch.append(key=record.key, value=value, timestamp=None)
                batch.close()
                acknowledgements.append(
                    await producer.send_batch(batch, output, partition=tp.partition)
                )
                done += len(records)
            if fetched:
                await asyncio.gather(*acknowledgements)
                await consumer.commit()
                steady.done(done)
        return steady.rate()
    finally:
        await consumer.stop()
        await producer.stop()


def _quix_python() -> tuple[Path | None, str]:
    """The Quix Streams environment's interpreter, made if missing; or why there is none."""
    python = QUIX_VENV / "bin" / "python"
    check = [
        str(python),
        "-c",
        f"import sys, quixstreams; sys.exit(quixstreams.__version__ != {QUIX_VERSION!r})",
    ]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, ""
    steps = {
        "python -m venv .venv-quix": [sys.executable, "-m", "venv", "--clear", str(QUIX_VENV)],
        f"pip install {QUIX_REQUIREMENT}": [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--retries=1",
            QUIX_REQUIREMENT,
        ],
    }
    for name, step in steps.items():
        try:
            subprocess.run(step, capture_output=True, text=True, timeout=900, check=True)
        except subprocess.CalledProcessError as error:
            lines = (error.stderr or error.stdout or "").strip().splitlines()
            return None, f"`{name}` failed: {lines[-1] if lines else error}"
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"`{name}` failed: {error}"
    return python, ""


@dataclass(frozen=True)
class Quix:
    rate: float  # inputs/s over the steady middle, timed inside the Quix process
    rate_to_end: float  # from 10% done to the end of the run, the last checkpoint included
    version: str


def _quix_rate(bootstrap: str, topic: str, count: int, tmp: str, round_: int) -> Quix | str:
    """Quix Streams' keyed stateful count with two outputs per input
    (``benchmarks/quix_count.py``, timed inside it), consumer group and state of its own for
    ``round_``; or why it was not measured."""
    python, reason = _quix_python()
    if python is None:
        return reason
    state = Path(tmp) / f"quix-state-{round_}"
    args = [bootstrap, topic, str(count), QUIX_OUTPUT, str(state), f"bench-quix-{round_}"]
    try:
        result = subprocess.run(
            [str(python), "-m", "benchmarks.quix_count", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return "the Quix Streams consumer did not finish within 600 s"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return f"the Quix Streams consumer failed: {lines[-1] if lines else result.returncode}"
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return Quix(float(found["rate"]), float(found["rate_to_end"]), str(found["version"]))


def _journey_work_alone(records: list[tuple[bytes, bytes]]) -> float:
    """Touchpoints/s of the worker's own work on ``records`` in this process, without Faust or
    a broker: decoding, the journey shards (engine and identity hand-offs, the hand-off
    messages delivered in process), each output as JSON with its partition, the state records'
    keys. An upper bound for the worker, which besides fetches, produces, saves to RocksDB,
    acknowledges and counts in metrics."""
    settings = Settings()
    catalog = load_catalog()
    inputs = [(kafka_partition(key.decode(), PARTITIONS), value) for key, value in records]
    shards = {
        partition: JourneyShard(
            JourneyEngine(
                catalog,
                allowed_lateness_ms=int(settings.allowed_lateness_s * 1000),
                idle_after_ms=int(settings.idle_after_s * 1000),
            ),
            partition,
            lambda key: kafka_partition(key, PARTITIONS),
        )
        for partition in range(PARTITIONS)
    }
    handoffs: list[tuple[int, bytes]] = []
    size = settings.journey_batch_size
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)  # the worker's
    try:
        started = time.perf_counter()
        for start in range(0, len(inputs), size):
            arrived, handoffs = handoffs, []
            for partition, raw in arrived:
                shards[partition].message(raw, None)
            for partition, raw in inputs[start : start + size]:
                shards[partition].touch(touch_of(raw), None)
            for partition, shard in shards.items():
                step = shard.drain()
                for output in step.outputs:
                    key = output.journey_id or output.person_id
                    orjson.dumps(output.as_dict())
                    partition_hash(key.encode())
                for route, message in step.sends:
                    handoffs.append((kafka_partition(route, PARTITIONS), message))
                for key in step.records:
                    f"{partition}|{key}".encode()
        return len(inputs) / (time.perf_counter() - started)
    finally:
        gc.set_threshold(*thresholds)


def _env(broker: EmbeddedBroker, tmp: str, **extra: str) -> dict[str, str]:
    return worker_env(broker.url, tmp, PARTITIONS, **extra)


def _rate_of(progress: Callable[[], float], count: int) -> float:
    """Records/s over the steady middle of the run: from 10% of the records done to 90%
    (group joins before and the watermark's hold of the last records after do not count).
    The progress is read every 0.25 s: a worker's /metrics exposition costs it CPU time
    (Prometheus reads it every 15 s)."""
    low, high = count // 10, count - count // 10
    wait_until(lambda: progress() >= low, 180, "a tenth of the records", 0.25)
    started, first = time.perf_counter(), progress()
    wait_until(lambda: progress() >= high, 600, "nine tenths of the records", 0.25)
    return (progress() - first) / (time.perf_counter() - started)


@dataclass(frozen=True)
class Throughput:
    raw: float
    bare_io: float
    quix: Quix | str  # or why it was not measured
    naive: float
    worker: float
    alone: float
    runs: dict[str, list[float]]  # each consumer's runs, in order


def _naive_rate(broker: EmbeddedBroker, tmp: str, round_: int) -> float:
    port = free_port()
    log = Path(tmp) / f"naive-{round_}.log"
    args = [broker.url, BY_PERSON, str(port), f"naive-benchmark-{round_}"]
    naive = start_python(["-m", "benchmarks.naive_agent", *args], None, log)
    try:

        def seen() -> float:
            running(naive, log)
            body = _get(f"http://127.0.0.1:{port}/count")
            return float(orjson.loads(body)["seen"]) if body else 0.0

        return _rate_of(seen, EVENTS)
    finally:
        stop([naive])


def _worker_rate(broker: EmbeddedBroker, tmp: str, prefix: str) -> float:
    """The journeywatch worker on the backlog in ``prefix``'s topics (its own consumer group,
    state and outputs: the prefix is in every topic name and in the application id)."""
    port = free_port()
    data = Path(tmp) / f"worker{prefix}"
    data.mkdir()
    log = data / "worker.log"
    env = _env(broker, str(data), JW_WORKER_WEB_PORT=str(port), JW_TOPIC_PREFIX=prefix)
    worker = start_python(["-m", "streams.cli", "worker"], env, log)
    try:

        def done() -> float:
            running(worker, log)
            topic = f'topic="{prefix}{BY_PERSON}"'
            return _metric_sum(port, "jw_journey_inputs_done_total{", topic)

        return _rate_of(done, EVENTS)
    finally:
        stop([worker])


def _best(found: list[Quix | str]) -> Quix | str:
    """The faster Quix run; or why Quix was not measured."""
    measured = [quix for quix in found if isinstance(quix, Quix)]
    return max(measured, key=lambda quix: quix.rate) if measured else found[0]


def _throughput() -> Throughput:
    """Every consumer twice, in two rounds (each round: raw, bare I/O, Quix, naive agent,
    worker), each run from the start of the same backlog; the better of each consumer's two
    runs. The rounds spread a busy moment of the machine over every consumer."""
    now = datetime.now(UTC)
    records = _validated(now, EVENTS, seed=5)
    alone = max(_journey_work_alone(records) for _ in range(2))
    found: dict[str, list[float]] = {"raw": [], "bare": [], "naive": [], "worker": []}
    quix: list[Quix | str] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(free_port(), Path(tmp) / "b.log") as broker,
    ):
        # the worker's second run reads a copy of the backlog in topics of its own
        prefixes = ("", "again.")
        for prefix in prefixes:
            settings = Settings(broker_url=broker.url, partitions=PARTITIONS, topic_prefix=prefix)
            ensure_topics(settings)
            _produce(broker.url, f"{prefix}{BY_PERSON}", records)
        # the baselines' output topics (Tansu auto-creates with 4 partitions whatever)
        unprefixed = Settings(broker_url=broker.url, partitions=PARTITIONS)
        ensure_topics(unprefixed, (BARE_OUTPUT, QUIX_OUTPUT))
        for round_, prefix in enumerate(prefixes):
            found["raw"].append(asyncio.run(_raw_rate(broker.url, BY_PERSON, EVENTS)))
            group = f"bench-bare-{round_}"
            found["bare"].append(
                asyncio.run(_bare_io_rate(broker.url, BY_PERSON, BARE_OUTPUT, EVENTS, group))
            )
            if not quix or isinstance(quix[0], Quix):  # not twice what cannot be measured
                quix.append(_quix_rate(broker.url, BY_PERSON, EVENTS, tmp, round_))
            found["naive"].append(_naive_rate(broker, tmp, round_))
            found["worker"].append(_worker_rate(broker, tmp, prefix))
    best = {name: max(rates) for name, rates in found.items()}
    runs = {
        "raw": found["raw"],
        "bare I/O": found["bare"],
        "Quix": [run.rate for run in quix if isinstance(run, Quix)],
        "naive agent": found["naive"],
        "worker": found["worker"],
    }
    return Throughput(
        best["raw"], best["bare"], _best(quix), best["naive"], best["worker"], alone, runs
    )


def _journeys_file(directory: str) -> Path:
    """The default journeys with every stage time-out at 2 s: drop-offs within the run."""
    text = re.sub(r"timeout: \S+", "timeout: 2s", DEFAULTS.read_text())
    path = Path(directory) / "journeys.yaml"
    path.write_text(text)
    return path


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _steady(standby: int) -> tuple[list[float], list[float], float, int, dict[str, float]]:
    """Two workers fed ``STEADY_RATE`` events/s of live traffic at ``touchpoints.raw``."""
    source = SimpleTrafficSource(seed=6)
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(free_port(), Path(tmp) / "b.log") as broker,
    ):
        ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
        base = free_port(span=2)
        env = _env(
            broker,
            tmp,
            JW_WORKER_WEB_PORT=str(base),
            JW_JOURNEYS_FILE=str(_journeys_file(tmp)),
            JW_TABLE_STANDBY_REPLICAS=str(standby),
        )
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--index", str(i)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(2)
        ]
        ports = [base, base + 1]
        try:
            wait_until(lambda: all(_ready(p) for p in ports), 120, "both workers ready", 0.05)
            records = _steady_records(source, STEADY_RATE * STEADY_SECONDS)
            processes = {
                "worker 1": psutil.Process(workers[0].pid),
                "worker 2": psutil.Process(workers[1].pid),
                "broker": psutil.Process(broker.pid),
                "load generator": psutil.Process(),
            }
            cpu_before = {name: _cpu_seconds(p) for name, p in processes.items()}
            started = time.monotonic()
            asyncio.run(_send_steadily(broker.url, records))
            elapsed = time.monotonic() - started
            cores = {
                name: (_cpu_seconds(p) - cpu_before[name]) / elapsed
                for name, p in processes.items()
            }
            # during the traffic: what a steady stream sees
            latency = _quantiles(_histogram(ports, LATENCY), (0.5, 0.99))
            dropoff_during = _histogram(ports, DROPOFF)
            # then the traffic stops: the partitions go idle and their watermarks advance with
            # the wall clock after JW_IDLE_AFTER_S (the last touchpoints' outputs and the last
            # drop-offs); the drop-offs of that tail are reported on their own, once every
            # journey has ended (every stage times out after 2 s; the gauge is refreshed every
            # 10 s)
            wait_until(
                lambda: all(
                    _metric_sum(p, "jw_active_journeys{") == 0 and _ready(p) for p in ports
                ),
                60,
                "every journey converted or dropped off",
                0.5,
            )
            dropoff = _quantiles(dropoff_during, (0.5, 0.99))
            idle = _since(_histogram(ports, DROPOFF), dropoff_during)
            dropoff += _quantiles(idle, (0.5, 0.99))
            rss = max(psutil.Process(w.pid).memory_info().rss for w in workers) / 2**20
            drops = int(sum(_metric_sum(p, "jw_journeys_dropped_off_total{") for p in ports))
            return latency, dropoff, rss, drops, cores
        finally:
            stop(workers)


_STAMP = b"@occurred_at@"
LATENCY = "jw_output_latency_seconds"
DROPOFF = "jw_dropoff_delay_seconds"


async def _send_steadily(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    """``records`` to ``touchpoints.raw`` at ``STEADY_RATE`` per second, each stamped with the
    time it is sent, in record batches every 10 ms (a cheap load generator: it shares the
    machine's cores with the workers and the broker)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    try:
        sender = BatchSender(lambda: producer, PARTITIONS)
        started = time.monotonic()
        sent = 0
        while sent < len(records):
            due = min(len(records), int((time.monotonic() - started) * STEADY_RATE))
            stamp = datetime.now(UTC).isoformat(timespec="microseconds").encode()
            for key, value in records[sent:due]:
                sender.add_keyed(RAW, key.decode(), value.replace(_STAMP, stamp))
            sent = max(sent, due)
            await sender.send()
            await asyncio.sleep(0.01)  # pacing the load
    finally:
        await producer.stop()


def _steady_records(source: SimpleTrafficSource, count: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of ``count`` raw events with a placeholder where the event time goes,
    made before the run so that the load generator costs little CPU during it (the workers
    share the machine's cores with it); the time of sending replaces the placeholder."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    placeholder = orjson.dumps(epoch.isoformat())
    records = []
    for event in source.events(epoch, count):
        value = orjson.dumps(event).replace(placeholder, b'"' + _STAMP + b'"')
        records.append((person_key(event), value))
    return records


def _memory() -> tuple[float, int]:
    """Resident memory of a journey partition holding ``JOURNEYS`` active journeys."""
    code = f"""
import gc, psutil
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.touch import Touch
gc.set_threshold(50_000, 20, 100)
engine = JourneyEngine(load_catalog(), allowed_lateness_ms=0)
base = psutil.Process().memory_info().rss
at = 1_790_000_000_000
batch = []
for i in range({JOURNEYS}):
    batch.append(Touch(f"e{{i}}", at + i, "web", "home.view", "view",
                       identifiers=(("device_id", f"d{{i}}"),)))
    if len(batch) == 10_000:
        engine.submit_batch(batch)
        batch = []
engine.submit_batch(batch)
engine.flush()
gc.collect()
print(psutil.Process().memory_info().rss, base, engine.active_journeys())
"""
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(output[0]) / 2**20, int(output[2])


def _not_met(alone: float) -> str:
    bound = (
        f"The worker's own work, measured alone in the same run, reaches {alone:.2f} of raw: "
        "the target is out of reach before Faust or the broker costs anything. "
        if alone < 0.25
        else ""
    )
    return (
        f"Not met. {bound}The agents take whole fetches and produce record batches "
        "(streams/faust_internals.py, streams/batching.py), and the journey engine is compiled; "
        "a profile of the worker "
        '(docs/streaming-topology.md, "Where a worker\'s time goes") gives the engine and the '
        "identity hand-offs about two fifths of its time, and the rest to work the raw baseline "
        "does not do: Faust's per-record bookkeeping (a message object per record, tracked "
        "and counted by sensors), decoding into the engine's "
        "touchpoint, about 2.6 outputs and one state record per touchpoint to serialize and "
        "produce."
    )


def _steady_rows(standby: int) -> tuple[str, str, int]:
    latency, dropoff, rss, drops, cores = _steady(standby)
    rows = (
        f"| {standby} | event time → output leaves the worker | {latency[0]:.2f} s | "
        f"{latency[1]:.2f} s | p99 < 1 s |\n"
        f"| {standby} | drop-off deadline passed → drop-off emitted | {dropoff[0]:.2f} s | "
        f"{dropoff[1]:.2f} s | < 2 s |\n"
        f"| {standby} | the same, after the traffic stopped (idle partitions) | "
        f"{dropoff[2]:.2f} s | {dropoff[3]:.2f} s | < 2 s |\n"
    )
    cpu = (
        f"standby replicas {standby}: "
        + ", ".join(f"{name} {used:.2f}" for name, used in cores.items())
        + f" (total {sum(cores.values()):.2f}; worker resident memory after the run "
        f"{rss:.0f} MiB)"
    )
    return rows, cpu, drops


def _parts() -> tuple[str, ...]:
    """The parts to run: ``JW_BENCH_TOPOLOGY_PARTS`` (comma-separated), all by default."""
    chosen = os.environ.get("JW_BENCH_TOPOLOGY_PARTS", "")
    names = tuple(name.strip() for name in chosen.split(",") if name.strip()) or PARTS
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        raise SystemExit(f"JW_BENCH_TOPOLOGY_PARTS: unknown part(s) {unknown}; choose from {PARTS}")
    return names


def _met(ratio: float, goal: str, met: bool) -> str:
    return f"{ratio:.2f} (goal {goal}): {'met' if met else 'not met'}"


def _throughput_text(t: Throughput) -> str:
    def row(name: str, rate: float) -> str:
        return f"| {name} | {rate:,.0f} | {rate / t.raw:.2f} | {rate / t.bare_io:.2f} |\n"

    if isinstance(t.quix, Quix):
        quix_name = (
            f"Quix Streams {t.quix.version}: keyed stateful count (RocksDB, changelog topic), "
            "two ~250-byte outputs per input (1 process; from 10% done to the end of the run, "
            f"the last checkpoint included: {t.quix.rate_to_end:,.0f}/s)"
        )
        quix_row = row(quix_name, t.quix.rate)
        quix_goal = _met(t.worker / t.quix.rate, "> 1", t.worker > t.quix.rate)
    else:
        quix_row = f"| Quix Streams: not measured ({t.quix}) | | | |\n"
        quix_goal = f"Quix Streams: not measured ({t.quix})"
    return (
        f"Command: `make bench` (suite `benchmarks/topology.py`). {EVENTS:,} validated events "
        "(SimpleTrafficSource, one per millisecond of event time: a backlog) in "
        f"`touchpoints.by_person` ({PARTITIONS} partitions, embedded broker) before the consumers "
        "start; each consumer below reads that same backlog from its start, one after the "
        "other (no consumer group for raw, a fresh one for every other run), twice: two "
        "rounds of raw, bare I/O, Quix, naive agent, worker (the worker's second run reads a "
        "copy of the backlog in topics of its own, `JW_TOPIC_PREFIX=again.`); each row gives "
        "the better of its two runs. Rates over the "
        "steady middle of each run, from 10% of the records done to 90% (group joins before, "
        "the watermark's hold of the last records after, do not count). *Done* and the clock, "
        "per consumer: raw, decoded, timed in its process at each fetch; bare I/O, the fetch's "
        "outputs acknowledged by the broker and its offsets committed, timed in its process "
        "at each fetch; Quix Streams, processed (`on_message_processed`: decoded, counted in "
        "the state, both outputs handed to librdkafka's producer, which sends them in the "
        "background; a checkpoint, producer and changelog flushed and offsets committed, every "
        "second, `commit_interval=1.0` as the worker's `broker_commit_interval`), timed "
        "inside its process at each input (`benchmarks/quix_count.py`, in its own virtual "
        "environment `.venv-quix`); the naive agent, decoded (its `/count` page, read every "
        "0.25 s); the worker, applied by the engine, outputs and state acknowledged by the "
        "broker, input acknowledged (`jw_journey_inputs_done_total` of `touchpoints.by_person`: "
        "touchpoints, not the hand-off messages they cause; read every 0.25 s).\n\n"
        "| consumer | events/s | ratio to raw aiokafka | ratio to bare I/O |\n"
        "| --- | ---: | ---: | ---: |\n"
        + row("raw aiokafka consume + orjson decode (baseline)", t.raw)
        + row(
            "bare I/O: aiokafka consume in a group + orjson decode, three ~250-byte records "
            "produced per input as record batches (`create_batch`/`send_batch`, per partition "
            "per fetch, to the input's partition), acknowledgements awaited once per fetch, "
            "explicit `commit()` "
            "(1 process)",
            t.bare_io,
        )
        + quix_row
        + row("naive Faust agent (one message per iteration, decode)", t.naive)
        + row("journeywatch worker, journey agent (1 process, all partitions)", t.worker)
        + row(
            "the worker's own work alone: decoding, engine, hand-offs, outputs as JSON (one "
            "process, no Faust, no broker; whole run, best of 2)",
            t.alone,
        )
        + "\nEach consumer's two runs, events/s in order (the spread is the machine's noise): "
        + "; ".join(
            f"{name} {', '.join(f'{rate:,.0f}' for rate in rates)}"
            for name, rates in t.runs.items()
            if rates
        )
        + ".\n\n"
        f"Goal (issue #25), the journeywatch worker against the bare I/O it must do: "
        f"{_met(t.worker / t.bare_io, '≥ 0.5', t.worker / t.bare_io >= 0.5)}. "
        f"The worker's own work alone runs at {t.alone / t.bare_io:.2f} of the bare I/O: both "
        f"done one after the other, with nothing else, would reach "
        f"{1 / (t.bare_io / t.alone + 1):.2f} of it, so the goal needs the worker's own work "
        "at least as fast as the bare I/O and next to nothing spent in Faust.\n\n"
        f"Goal (issue #25), the journeywatch worker against Quix Streams with two outputs per "
        f"input: {quix_goal}.\n\n"
        f"Target for the full topology: at least 0.25 of raw. "
        f"{'Met.' if t.worker / t.raw >= 0.25 else _not_met(t.alone / t.raw)}\n\n"
    )


def _steady_text() -> str:
    default_rows, default_cpu, drops = _steady_rows(0)
    standby_rows, standby_cpu, _ = _steady_rows(1)
    return (
        f"Steady live traffic: {STEADY_RATE:,} events/s for {STEADY_SECONDS} s into "
        "`touchpoints.raw` (a load generator sending record batches every 10 ms, each event "
        "stamped when sent), two workers (ingest + journeys), every stage time-out set to 2 s "
        f"so that journeys drop off during the run ({drops:,} drop-offs), default lateness "
        "(0.5 s), with the default `JW_TABLE_STANDBY_REPLICAS=0` and with 1. From the "
        "workers' histograms (bucket-interpolated), read when the last event has been sent "
        "(so a steady stream); then the traffic stops and the last drop-offs come from idle "
        "partitions, whose watermarks advance with the wall clock after `JW_IDLE_AFTER_S` "
        "(0.5 s): reported on their own.\n\n"
        "| standby replicas | measure | p50 | p99 | target |\n"
        "| ---: | --- | ---: | ---: | --- |\n"
        f"{default_rows}{standby_rows}\n"
        "CPU in use while the traffic was sent (cores; the machine has 2, shared by all): "
        f"{default_cpu}; {standby_cpu}. A standby replica reads every state change of the "
        "other worker through Faust's per-message path, in the fetch loop the agents share: it "
        "costs CPU (the two runs above) and lengthens fetch cycles. After the traffic stops, "
        "a drop-off waits by design for `JW_IDLE_AFTER_S` without input, then for the "
        "watermark (wall clock minus `JW_ALLOWED_LATENESS_S`) and the next sweep "
        "(`JW_SWEEP_INTERVAL_S`, 0.25 s): about 1.3 s with the defaults, plus the time to emit "
        "the burst of drop-offs that fire together.\n\n"
    )


def _memory_text() -> str:
    memory, active = _memory()
    return (
        f"Memory: one journey partition (engine) holding {active:,} active journeys "
        f"(one anonymous person each): {memory:,.0f} MiB resident "
        f"(target < 2 GiB).\n"
    )


def run() -> str:
    parts = _parts()
    text = "## Streaming topology\n\n"
    if "throughput" in parts:
        text += _throughput_text(_throughput())
    if "steady" in parts:
        text += _steady_text()
    if "memory" in parts:
        text += _memory_text()
    skipped = [part for part in PARTS if part not in parts]
    if skipped:
        text += f"Not run: {', '.join(skipped)} (`JW_BENCH_TOPOLOGY_PARTS={','.join(parts)}`).\n"
    return text
