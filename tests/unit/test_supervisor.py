"""The supervisor's pure pieces: back-off, crash-loop window, run-status file, log rotation."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.settings import Settings
from streams.runtime import Child, EmbeddedRuntime, RuntimeErrorExit
from streams.supervisor import (
    CrashHistory,
    RestartPolicy,
    describe_exit,
    live_summary,
    read_status,
    restarts_by_process,
    rotate_logs,
    write_status,
)


def test_back_off_doubles_from_initial_to_max() -> None:
    policy = RestartPolicy(initial_s=0.5, max_s=10.0)
    assert [policy.delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(10_000) == 10.0  # no overflow


def test_quick_crashes_back_off_and_a_stable_process_starts_again_from_initial() -> None:
    history = CrashHistory(RestartPolicy(initial_s=0.5, max_s=10, crash_limit=100, stable_s=30))
    delays = [history.crashed(now=t, uptime_s=1.0) for t in (0, 2, 4, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    # up for longer than stable_s: the back-off resets
    assert history.crashed(now=100, uptime_s=45.0) == 0.5
    assert history.crashed(now=101, uptime_s=0.5) == 1.0


def test_crash_limit_within_the_window_is_a_crash_loop() -> None:
    history = CrashHistory(RestartPolicy(crash_limit=5, window_s=60, stable_s=60))
    for t in (0, 10, 20, 30):
        assert history.crashed(now=t, uptime_s=1) is not None
    assert history.crashed(now=40, uptime_s=1) is None  # the fifth within 60 s
    assert history.recent == 5


def test_crashes_spread_wider_than_the_window_are_not_a_loop() -> None:
    history = CrashHistory(RestartPolicy(crash_limit=3, window_s=60, stable_s=600))
    results = [history.crashed(now=t, uptime_s=1) for t in (0, 50, 100, 150, 200, 250)]
    assert None not in results  # never three within 60 s
    assert history.recent == 2


def test_exits_are_described_with_signal_names() -> None:
    assert describe_exit(-9) == "signal SIGKILL (exit -9)"
    assert describe_exit(1) == "exit 1"
    assert describe_exit(0) == "exit 0"


def test_status_file_is_replaced_atomically_and_read_for_its_run_only(tmp_path: Path) -> None:
    path = tmp_path / "run-status.json"
    status = {
        "pid": 4242,
        "state": "running",
        "processes": {
            "sink": {"pid": 1, "state": "running", "restarts": 2, "last_exit": None},
            "worker-0": {
                "pid": 2,
                "state": "restarting",
                "restarts": 1,
                "last_exit": {"code": -9, "description": "signal SIGKILL (exit -9)", "at": "x"},
            },
        },
    }
    write_status(path, status)
    write_status(path, status)  # replaces, leaves no temporary file behind
    assert [p.name for p in tmp_path.iterdir()] == ["run-status.json"]
    assert read_status(path, 4242) == status
    assert read_status(path, None) == status
    assert read_status(path, 1) is None  # another run's (stale) file
    assert read_status(tmp_path / "missing.json", None) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_status(tmp_path / "bad.json", None) is None
    assert restarts_by_process(status) == {"sink": 2, "worker-0": 1}
    summary = live_summary(status)
    assert summary is not None
    assert [p["process"] for p in summary["processes"]] == ["sink", "worker-0"]
    assert summary["processes"][1]["last_exit"]["code"] == -9
    assert live_summary(None) is None and restarts_by_process(None) == {}


def test_logs_are_rotated_so_a_run_starts_with_empty_ones(tmp_path: Path) -> None:
    (tmp_path / "worker-0.log").write_text("second run\n")
    (tmp_path / "worker-0.log.1").write_text("first run\n")
    (tmp_path / "sink.log").write_text("sink\n")
    rotate_logs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sink.log.1", "worker-0.log.1"]
    assert (tmp_path / "worker-0.log.1").read_text() == "second run\n"


def test_the_runtime_takes_its_policy_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        run_restart_initial_s=0.25,
        run_restart_max_s=4,
        run_crash_limit=3,
        run_crash_window_s=20,
    )
    policy = EmbeddedRuntime(settings).policy
    assert (policy.initial_s, policy.max_s, policy.crash_limit, policy.window_s) == (
        0.25,
        4,
        3,
        20,
    )


@pytest.mark.parametrize("name", ["run_restart_initial_s", "run_crash_window_s"])
def test_restart_settings_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings(**{name: 0})  # type: ignore[arg-type]


def test_status_is_not_written_into_a_data_dir_this_run_does_not_hold(tmp_path: Path) -> None:
    runtime = EmbeddedRuntime(Settings(data_dir=tmp_path))
    runtime._write_status()  # no lock on the directory (e.g. the ports were busy)
    assert not (tmp_path / "run-status.json").exists()
    runtime._lock_data_dir(tmp_path)
    try:
        runtime._write_status()
        status = read_status(tmp_path / "run-status.json", os.getpid())
        assert status is not None and status["state"] == "starting"
    finally:
        runtime.stop()
    status = read_status(tmp_path / "run-status.json", os.getpid())
    assert status is not None and status["state"] == "stopped"


# --- the runtime's supervision loop, with tiny processes instead of journeywatch's ------------


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _runtime(tmp_path: Path, **settings: object) -> tuple[EmbeddedRuntime, _Out]:
    out = _Out()
    runtime = EmbeddedRuntime(
        Settings(data_dir=tmp_path, run_restart_initial_s=0.05, **settings),  # type: ignore[arg-type]
        out=out,  # type: ignore[arg-type]
    )
    runtime._lock_data_dir(tmp_path)
    runtime.log_dir = tmp_path / "logs"
    runtime.log_dir.mkdir()
    return runtime, out


def _child(runtime: EmbeddedRuntime, name: str, code: str, essential: bool = True) -> Child:
    child = Child(
        name,
        [sys.executable, "-c", code],
        None,
        "",
        runtime.log_dir / f"{name}.log",
        CrashHistory(runtime.policy),
        essential=essential,
    )
    runtime.children.append(child)
    runtime._launch(child)
    return child


def _supervise_until(
    runtime: EmbeddedRuntime, done: Callable[[], bool], timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "supervision did not get there"
        runtime.supervise()
        time.sleep(0.02)


def test_a_child_that_dies_is_restarted_and_reported(tmp_path: Path) -> None:
    runtime, out = _runtime(tmp_path)
    try:
        # dies the first time (a marker file remembers), stays up the second
        marker = tmp_path / "once"
        code = (
            f"import pathlib, sys, time\np = pathlib.Path({str(marker)!r})\n"
            "if not p.exists():\n    p.write_text('x'); print('dying'); sys.exit(3)\n"
            "time.sleep(60)\n"
        )
        child = _child(runtime, "worker-0", code)
        first = child.process
        assert first is not None
        _supervise_until(runtime, lambda: child.restarts == 1 and child.state == "running")
        assert child.process is not None and child.process.pid != first.pid
        assert f"worker-0 (pid {first.pid}) exited with exit 3" in out.text
        assert "restart 1 in 0.05 s" in out.text
        status = read_status(tmp_path / "run-status.json", os.getpid())
        assert status is not None
        worker = status["processes"]["worker-0"]
        assert worker["restarts"] == 1 and worker["last_exit"]["code"] == 3
        log = (tmp_path / "logs" / "worker-0.log").read_text()
        assert "dying" in log and "worker-0 started (restart 1)" in log
    finally:
        runtime.stop()
    assert child.process.poll() is not None  # stopped with the run


def test_an_essential_child_in_a_crash_loop_stops_the_run(tmp_path: Path) -> None:
    runtime, _ = _runtime(tmp_path, run_crash_limit=3)
    try:
        _child(runtime, "sink", "print('cannot open ClickHouse'); raise SystemExit(1)")
        with pytest.raises(RuntimeErrorExit) as failure:
            _supervise_until(runtime, lambda: False)
        message = str(failure.value)
        assert "the sink process crashed 3 times within 60 s" in message
        assert "the last with exit 1" in message and "journeywatch run stops" in message
        assert "cannot open ClickHouse" in message and "sink started (restart 2)" in message
    finally:
        runtime.stop()


def test_optional_monitoring_in_a_crash_loop_is_given_up_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    runtime, out = _runtime(tmp_path, run_crash_limit=2)
    try:
        prometheus = _child(runtime, "prometheus", "raise SystemExit(2)", essential=False)
        _supervise_until(runtime, lambda: prometheus.state == "gave up")
        runtime.supervise()  # nothing more happens to it
        assert prometheus.restarts == 1
        assert "the prometheus process crashed 2 times" in out.text
        assert "the run goes on without it" in out.text
    finally:
        runtime.stop()


def test_a_simulator_that_fails_is_started_again_with_a_new_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int | None] = []

    class FailingSimulator(threading.Thread):
        def __init__(self, settings: Settings, rate: float, seed: int | None) -> None:
            super().__init__(daemon=True)
            started.append(seed)
            self.seed = seed
            self.error: Exception | None = None

        def run(self) -> None:
            if len(started) == 1:
                self.error = ConnectionError("broker unreachable")

        def stop(self) -> None:
            pass

    monkeypatch.setattr("streams.runtime.SimulatorThread", FailingSimulator)
    runtime, out = _runtime(tmp_path, simulate_seed=7, run_demo=False)  # the plain simulator
    try:
        runtime._start_simulator(7)
        _supervise_until(runtime, lambda: len(started) == 2)
        assert started == [7, None]  # not the same seed: its event ids are in ClickHouse
        assert "the simulator stopped (ConnectionError('broker unreachable'))" in out.text
        status = read_status(tmp_path / "run-status.json", os.getpid())
        assert status is not None and status["processes"]["simulator"]["restarts"] == 1
    finally:
        runtime.stop()
