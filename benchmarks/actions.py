"""Closed-loop actions (docs/actions.md): actions delivered per second by one actions agent, and
the delay from a trigger's event time to its delivery (target p99 under 2 s), on the embedded
broker with a loopback receiver that answers at once.

Two phases: a burst (every trigger produced at once: throughput), then a steady stream at a
fraction of that rate (latency: each trigger's event time is the moment it was produced, so
this is the delay the actions agent adds; the workers' own event-to-output latency,
``jw_output_latency_seconds``, comes before it).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from benchmarks._support import free_port, running, start_python, stop, worker_env
from pipeline.engine import Output
from streams.broker import EmbeddedBroker
from streams.topics import EXPERIENCE_MOMENTS
from tests.helpers import http_get

PARTITIONS = 4
BURST = 2_000
STEADY = 1_000
STEADY_RATE = 50.0  # triggers per second in the latency phase

RULE = """
actions:
  - name: payment_failed
    when: {moment_of_truth_failed: payment}
    webhook:
      url: http://127.0.0.1:%d/tickets
      body: {customer: "{customer_id}", at: "{at}"}
"""


class _Receiver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: dict[str, float] = {}  # idempotency key → wall time of its first arrival
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # answers in one segment without waiting for the sender's delayed ACK (Nagle: 40
            # ms a request, which measured the receiver instead of the agent)
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.time()
                with receiver.lock:
                    receiver.received.setdefault(self.headers.get("Idempotency-Key", ""), now)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def _trigger(n: int, at: int) -> Output:
    person = f"c:bench-{n}"
    return Output(
        "moment_of_truth",
        "payment",
        f"mot:payment:{person}:{at}",
        at,
        person,
        journey="online_purchase",
        journey_id=f"j-{n}",
        stage="payment",
        channel="web",
        detail=(("passed", False),),
    )


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> str:
    load = os.getloadavg()[0]
    receiver = _Receiver()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(free_port()) as broker:
        journeys = Path(tmp) / "journeys.yaml"
        defaults = resources.files("pipeline").joinpath("defaults/journeys.yaml").read_text()
        journeys.write_text(defaults + RULE % receiver.port)
        port = free_port()
        env = worker_env(
            broker.url,
            f"{tmp}/var",
            PARTITIONS,
            JW_JOURNEYS_FILE=str(journeys),
            JW_ACTIONS_WEB_PORT=str(port),
            JW_LOG_LEVEL="ERROR",
        )
        log = Path(tmp) / "actions.log"
        agent = start_python(["-m", "streams.cli", "actions", "run"], env, log)
        try:

            def ready() -> bool:
                running(agent, log)
                return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200

            _wait(ready, 90, "the actions agent")
            producer = KafkaProducer(bootstrap_servers=broker.url, linger_ms=5)

            def send(output: Output) -> None:
                key = (output.journey_id or output.person_id).encode()
                producer.send(EXPERIENCE_MOMENTS, orjson.dumps(output.as_dict()), key=key)

            # burst: throughput
            now = int(time.time() * 1000)
            started = time.perf_counter()
            for n in range(BURST):
                send(_trigger(n, now))
            producer.flush()
            _wait(lambda: receiver.count() >= BURST, 300, "the burst's deliveries")
            burst_s = time.perf_counter() - started
            # steady: latency from each trigger's event time to its delivery
            sent: dict[str, float] = {}
            begin = time.monotonic()
            for n in range(STEADY):
                delay = n / STEADY_RATE - (time.monotonic() - begin)
                if delay > 0:
                    time.sleep(delay)  # pacing the input rate, not waiting for a result
                at = time.time()
                output = _trigger(BURST + n, int(at * 1000))
                sent[f"{output.output_id}:payment_failed"] = int(at * 1000) / 1000
                send(output)
                producer.flush()
            _wait(lambda: receiver.count() >= BURST + STEADY, 120, "the steady deliveries")
            producer.close()
            with receiver.lock:
                delays = [receiver.received[key] - at for key, at in sent.items()]
        finally:
            stop([agent])
            receiver.server.shutdown()
    rate = BURST / burst_s
    return (
        "## Closed-loop actions\n\n"
        f"One actions agent (`journeywatch actions run`, {PARTITIONS} partitions) on the embedded "
        "broker, a loopback receiver that answers 200 at once (a `ThreadingHTTPServer`), one "
        "rule (`moment_of_truth_failed: payment`), each trigger a different customer.\n\n"
        "| measure | value |\n| --- | --- |\n"
        f"| burst: {BURST} triggers produced at once, delivered in | {burst_s:.1f} s "
        f"(**{rate:.0f} actions/s**) |\n"
        f"| steady: {STEADY} triggers at {STEADY_RATE:g}/s, trigger event → delivery p50 | "
        f"{statistics.median(delays) * 1000:.0f} ms |\n"
        f"| p99 (target under 2 s) | **{_p(delays, 0.99) * 1000:.0f} ms** |\n"
        f"| max | {max(delays) * 1000:.0f} ms |\n\n"
        "Each delivery is a route step (outputs → `actions.triggers`), a POST and a table "
        "write flushed to its changelog, one after the other in the process (Faust runs one "
        "instance of an agent per process): one agent delivers about 1 / (the receiver's "
        "answer time + a flush) actions a second; more `actions run` processes share the "
        "partitions (docs/actions.md). The delay starts at the output's event time as "
        f"produced here; the workers' event-to-output latency comes before it. Load average "
        f"at the start: {load:.1f}.\n"
    )
