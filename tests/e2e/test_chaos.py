"""Chaos on `journeywatch run`: children SIGKILLed mid-stream are restarted, and nothing the
collector acknowledged is lost; a child that crash-loops stops the run, naming it.

A simulated day (with its ground truth) goes in through the collector as a client would send
it, two ways: batches each as soon as it is due at 6,000 times real time (70 hours of events in
about 45 s, 12 hours of lateness), and all at once with the default lateness (0.5 s); retried on
503, on refused or reset connections and on time-outs with the same event ids. Meanwhile the
sink, then the worker, then the collector are killed with SIGKILL. Afterwards every event
answered 202 is in ClickHouse exactly once, the journey outcomes are the truth, and the run
reports each restart (status file, /metrics, the live API).

The client waits out the worker's restart before it goes on, as test_topology's chaos test
does. Before watermark alignment, sent unpaced, a few outcomes could differ from the truth
although every acknowledged event was stored once (2 of 5 runs, 1 to 5 journeys of 510): the
restarted worker read a backlog in large fetches and a partition's watermark ran ahead of
touchpoints forwarded to it through the hand-off topic. With alignment, all at once with the
default lateness: 6 of 6 runs exact (2026-12-07).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from kafka import TopicPartition

from pipeline.scenario import DaySimulator, default_incidents
from pipeline.settings import Settings
from streams.offsets import committed_offsets, confirmed_end_offsets, group_lag
from streams.topics import BY_PERSON, HANDOFF, RAW
from tests.e2e.stack import PARTITIONS, clock_events, day_start
from tests.e2e.test_run import journeywatch_run
from tests.e2e.test_topology import found, outputs_of, truth_of
from tests.helpers import (
    WEB_READ_TOKEN,
    free_port,
    http_get,
    http_json,
    jw_env,
    metric_values,
    query_chdb,
    wait_until,
)

pytestmark = pytest.mark.e2e

BATCH = 10  # events per request
SPEED = 6_000  # event time per wall time (test_topology: 3,000); the day spans 70 hours


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["occurred_at"]).timestamp()


class Client:
    """POSTs batches to the collector and retries them as a real client does, until 202."""

    def __init__(self, port: int, key: str) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/events"
        self.key = key
        self.acknowledged: set[str] = set()
        self.retries: Counter[str] = Counter()

    def send(self, events: list[dict[str, Any]], give_up_after_s: float = 90) -> None:
        body = json.dumps(events).encode()
        deadline = time.monotonic() + give_up_after_s
        while True:
            assert time.monotonic() < deadline, f"no 202 within {give_up_after_s} s: {self.retries}"
            request = urllib.request.Request(
                self.url,
                data=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == 202
                    answer = json.loads(response.read())
            except urllib.error.HTTPError as exc:
                assert exc.code == 503, f"the collector refused a valid request: {exc.code}"
                self.retries["503"] += 1
                # Retry-After says 5 s; this client waits at most 1 s (the test's pace)
                time.sleep(min(float(exc.headers.get("Retry-After") or 1), 1.0))
                continue
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                self.retries[type(exc).__name__] += 1  # the same batch again: same event ids
                time.sleep(0.2)
                continue
            except urllib.error.URLError as exc:
                self.retries[type(exc.reason).__name__] += 1  # refused, reset, timed out
                time.sleep(0.2)
                continue
            rejected = {r["index"] for r in answer.get("rejected", [])}
            assert not rejected, f"valid events rejected: {answer}"
            self.acknowledged.update(e["event_id"] for e in events)
            return


def run_env(tmp_path: Path, **settings: object) -> tuple[dict[str, str], dict[str, int]]:
    ports = {
        name: free_port()
        for name in ("status", "worker", "broker", "collector", "prometheus", "alertmanager")
    }
    env = jw_env(
        status_port=ports["status"],
        worker_web_port=ports["worker"],
        embedded_broker_port=ports["broker"],
        collector_port=ports["collector"],
        prometheus_port=ports["prometheus"],
        alertmanager_port=ports["alertmanager"],
        data_dir=tmp_path / "var",
        clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}",
        simulate_rate=0,
        local_monitoring=False,  # two cores: Prometheus is not what this test is about
        partitions=PARTITIONS,
        sink_batch_seconds=0.2,
        **settings,
    )
    return env, ports


def status_of(tmp_path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((tmp_path / "var" / "run-status.json").read_text()))
    except (OSError, ValueError):
        return {}


def pid_of(tmp_path: Path, name: str) -> int:
    return int(status_of(tmp_path)["processes"][name]["pid"])


def up_again(tmp_path: Path, name: str, old_pid: int) -> bool:
    process = status_of(tmp_path).get("processes", {}).get(name, {})
    return bool(process.get("state") == "running" and process.get("pid") != old_pid)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def wait_until_running(run: subprocess.Popen[bytes], tmp_path: Path, output: Path) -> None:
    """Until the run's status file says it is running (fails at once, quoting its output, if
    the run exits first)."""
    wait_until(
        lambda: status_of(tmp_path).get("state") == "running" or run.poll() is not None,
        150,
        "the run to be up",
    )
    assert run.poll() is None, output.read_text()


@pytest.mark.parametrize(
    "speed", [SPEED, None], ids=["paced-12h-lateness", "full-speed-default-lateness"]
)
def test_children_killed_mid_stream_lose_no_acknowledged_event(
    tmp_path: Path, speed: float | None
) -> None:
    # A simulated day, paced as tests/e2e/test_topology.py paces it (a day in about 30 s, with
    # 12 hours of lateness), and all at once with the default lateness (watermark alignment
    # keeps what a restarted worker reads in order: docs/streaming-topology.md, "Time"). The
    # client sends each batch as soon as it is due, and retries at once.
    lateness = 12 * 3600 if speed else Settings.model_fields["allowed_lateness_s"].default
    env, ports = run_env(tmp_path, allowed_lateness_s=lateness)
    start = day_start()
    simulator = DaySimulator(29, start, 500, default_incidents(start))
    events = simulator.generate()
    broker = f"127.0.0.1:{ports['broker']}"
    base = f"http://127.0.0.1:{ports['status']}"
    output = tmp_path / "run.out"
    with journeywatch_run(env, output) as run:

        def running() -> bool:
            assert run.poll() is None, output.read_text()
            return status_of(tmp_path).get("state") == "running"

        wait_until(running, 150, "the run to be up")
        key = (tmp_path / "var" / "collector-demo.key").read_text().strip()
        client = Client(ports["collector"], key)
        killed: dict[str, int] = {}
        began = time.monotonic()
        first = _at(events[0])
        paused = 0.0  # the wait for the worker's restart: the pace resumes after it

        def due(event: dict[str, Any]) -> float:
            return (_at(event) - first) / speed if speed else 0.0

        for n in range(0, len(events), BATCH):
            progress = n / len(events)
            wait = due(events[n]) + paused - (time.monotonic() - began)
            if wait > 0:
                time.sleep(wait)  # pacing the input, not waiting for a result
            if progress >= 0.25 and "sink" not in killed:
                killed["sink"] = pid_of(tmp_path, "sink")
                kill(killed["sink"])  # nothing waits for it: the stream goes on meanwhile
            if progress >= 0.5 and "worker-0" not in killed:
                killed["worker-0"] = pid_of(tmp_path, "worker-0")
                kill(killed["worker-0"])
                # The client waits out the restart, as the topology's chaos test does: at this
                # pace its seconds are hours of event time, and a customer's next step would
                # overtake the identity hand-off it depends on (live, they are seconds).
                wait_until(
                    lambda: running() and up_again(tmp_path, "worker-0", killed["worker-0"]),
                    120,
                    "the worker restarted and ready",
                )
                paused = time.monotonic() - began - due(events[n])  # resume the pace from here
            if progress >= 0.75 and "collector" not in killed:
                killed["collector"] = pid_of(tmp_path, "collector")
                kill(killed["collector"])  # the client's next requests are refused: it retries
            client.send(events[n : n + BATCH])
        streamed_s = time.monotonic() - began
        wait_until(
            lambda: running() and all(up_again(tmp_path, n, pid) for n, pid in killed.items()),
            120,
            "every killed process restarted and ready",
        )
        assert set(killed) == {"sink", "worker-0", "collector"}
        assert run.poll() is None, output.read_text()
        assert client.acknowledged == {e["event_id"] for e in events}
        assert sum(client.retries.values()) > 0, "the collector's death went unnoticed"

        # Every acknowledged event reaches ClickHouse (asked through the restarted sink).
        wanted = sorted(client.acknowledged)

        def stored() -> int:
            found_ids: set[str] = set()
            for i in range(0, len(wanted), 5000):
                request = urllib.request.Request(
                    f"{base}/api/v1/touchpoints/stored",
                    data=json.dumps({"event_ids": wanted[i : i + 5000]}).encode(),
                    headers={
                        "Content-Type": "application/json",
                        "Authorization": f"Bearer {WEB_READ_TOKEN}",
                    },
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        found_ids.update(json.loads(response.read())["stored"])
                except (urllib.error.URLError, OSError):
                    return 0
            return len(found_ids) == len(wanted) and len(found_ids)

        wait_until(stored, 90, f"all {len(wanted)} acknowledged events in ClickHouse", 0.5)

        # Then the clock moves past every deadline, once every touchpoint and hand-off has been
        # processed (as in test_topology), and the outcomes must be the truth.
        def drained() -> bool:
            if group_lag(broker, "journeywatch", [RAW]):
                return False
            processed: dict[tuple[str, str], float] = {
                (tp.topic, str(tp.partition)): offset
                for tp, offset in committed_offsets(broker, "journeywatch").items()
            }
            _, body = http_get(f"http://127.0.0.1:{ports['worker']}/metrics")
            for labels, value in metric_values(body.decode(), "jw_journey_input_offset").items():
                where = (dict(labels)["topic"], dict(labels)["partition"])
                processed[where] = max(processed.get(where, 0), value)
            ends = confirmed_end_offsets(
                broker,
                [TopicPartition(t, p) for t in (BY_PERSON, HANDOFF) for p in range(PARTITIONS)],
            )
            return all(
                processed.get((tp.topic, str(tp.partition)), 0) >= end
                for tp, end in ends.items()
                if end
            )

        wait_until(drained, 120, "every touchpoint and hand-off processed", 0.5)
        clocks = clock_events(int(time.time() * 1000) - 60_000)
        client.send(clocks)
        truth = truth_of(simulator)

        def settled() -> bool:
            outcomes, _ = found(broker)
            return outcomes == truth and group_lag(broker, "journeywatch", [HANDOFF]) == 0

        with contextlib.suppress(AssertionError):
            wait_until(settled, 120, "the outcomes to equal the ground truth", 1.0)
        outcomes, outputs = found(broker)
        _, body = http_get(f"http://127.0.0.1:{ports['worker']}/metrics")
        late = metric_values(body.decode(), "jw_late_events_total")
        assert outcomes == truth, (
            outcomes - truth,
            truth - outcomes,
            late,
            client.retries,
            outputs_of((outcomes - truth) + (truth - outcomes), outputs),
        )
        expected = Counter(k[2] for k in truth.elements())
        wait_until(
            lambda: all(
                (http_json(f"{base}/api/v1/stats") or {}).get("journey_events_by_name", {}).get(n)
                == c
                for n, c in expected.items()
            ),
            60,
            f"ClickHouse journey_events to hold {dict(expected)}",
            0.5,
        )

        # The run reports each restart: its output, the status file, /metrics, the live API.
        text = output.read_text()
        for name, pid in killed.items():
            assert f"{name} (pid {pid}) exited with signal SIGKILL (exit -9)" in text, text
        processes = status_of(tmp_path)["processes"]
        for name in killed:
            assert processes[name]["restarts"] == 1 and processes[name]["state"] == "running"
            assert processes[name]["last_exit"]["code"] == -9
        _, body = http_get(f"{base}/metrics")
        restarts = metric_values(body.decode(), "jw_run_restarts_total")
        assert {dict(k)["process"]: v for k, v in restarts.items()} == {
            "sink": 1,
            "worker-0": 1,
            "collector": 1,
        }
        live = http_json(f"{base}/api/v1/live")
        shown = {p["process"]: p for p in live["run"]["processes"]}
        assert shown["worker-0"]["restarts"] == 1 and shown["worker-0"]["last_exit"]["code"] == -9
        family = [c.pid for c in psutil.Process(run.pid).children(recursive=True)]
        run.send_signal(signal.SIGINT)
        assert run.wait(90) == 0, output.read_text()
        assert not [
            p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]

    # Exactly once: one row per event id (FINAL: what ClickHouse keeps of copies a re-processing
    # worker may have put on the topic at other offsets), and the sink, killed mid-write, never
    # wrote a record of its input twice.
    chdb = tmp_path / "clickhouse"
    ((rows, ids),) = query_chdb(
        chdb, "SELECT count(), uniqExact(event_id) FROM journeywatch.touchpoints FINAL"
    )
    assert int(rows) == int(ids) == len(events) + len(clocks)
    (again,) = query_chdb(
        chdb,
        "SELECT count() - uniqExact(kafka_topic, kafka_topic_id, kafka_partition, kafka_offset) "
        "FROM journeywatch.touchpoints",
    )[0]
    assert int(again) == 0
    print(f"streamed {len(events)} events in {streamed_s:.1f} s; retries {dict(client.retries)}")


def test_a_crash_looping_child_stops_the_run_with_this_runs_log(tmp_path: Path) -> None:
    env, _ = run_env(tmp_path, run_crash_limit=3, run_crash_window_s=60, run_restart_initial_s=0.2)
    logs = tmp_path / "var" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-0.log").write_text("Traceback: an error of an earlier run\n")
    output = tmp_path / "run.out"
    with journeywatch_run(env, output) as run:
        wait_until_running(run, tmp_path, output)
        broker_pid = status_of(tmp_path)["broker"]["pid"]
        killed: list[int] = []

        def kill_worker() -> bool:
            if run.poll() is not None:
                return True
            process = status_of(tmp_path).get("processes", {}).get("worker-0", {})
            pid = process.get("pid")
            if pid and pid not in killed and process.get("state") in ("starting", "running"):
                with contextlib.suppress(ProcessLookupError):
                    kill(pid)
                killed.append(pid)
            return False

        wait_until(kill_worker, 60, "the run to stop", 0.05)
        assert run.wait(60) == 1
        text = output.read_text()
        assert len(killed) == 3, (killed, text)
        assert "restart 1 in 0.2 s" in text and "restart 2 in 0.4 s" in text, text
        message = text[text.index("journeywatch: the worker-0 process crashed") :]
        assert "crashed 3 times within 60 s" in message
        assert "the last with signal SIGKILL (exit -9)" in message
        assert "Last lines of" in message and "worker-0.log (this run)" in message
        assert "--- journeywatch run: worker-0 started (restart 2)" in message
        assert "an error of an earlier run" not in text
        assert "an error of an earlier run" in (logs / "worker-0.log.1").read_text()
        assert not psutil.pid_exists(broker_pid) or psutil.Process(broker_pid).status() == "zombie"
        assert status_of(tmp_path)["state"] == "failed"
        assert "worker-0" in status_of(tmp_path)["failure"]


def test_the_embedded_broker_dying_stops_the_run_saying_why(tmp_path: Path) -> None:
    env, _ = run_env(tmp_path)
    output = tmp_path / "run.out"
    with journeywatch_run(env, output) as run:
        wait_until_running(run, tmp_path, output)
        children = [c.pid for c in psutil.Process(run.pid).children()]
        kill(status_of(tmp_path)["broker"]["pid"])
        assert run.wait(90) == 1
        text = output.read_text()
        assert "the embedded broker exited with signal SIGKILL (exit -9)" in text, text
        assert "memory only" in text
        assert not [
            p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
