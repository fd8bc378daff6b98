"""Small helpers the benchmark suites share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks._steady import (
    FETCH_MAX_WAIT_MS,
    HEARTBEAT_MS,
    REBALANCE_TIMEOUT_MS,
    SESSION_TIMEOUT_MS,
)
from tests.helpers import free_port, start_python, stop_process

__all__ = ["free_port", "running", "start_python", "stop", "worker_env"]


def running(process: subprocess.Popen[bytes], log: Path) -> None:
    """Raise, quoting the end of its log (``start_python``), if ``process`` has exited: a
    benchmark waiting on a process that crashed at start would otherwise wait out its time-out
    and say nothing."""
    if process.poll() is not None:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail}")


def stop(processes: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM each process, then SIGKILL what has not stopped within ``timeout`` (saying so:
    a process left behind would take the cores from the next measurement)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        if stop_process(process, timeout) == -signal.SIGKILL:
            print(
                f"warning: {process.args!r} ignored SIGTERM for {timeout:.0f} s; killed",
                file=sys.stderr,
            )


def worker_env(broker_url: str, data_dir: str, partitions: int, **extra: str) -> dict[str, str]:
    """A benchmark worker's environment (short group time-outs and fetch waits: Tansu)."""
    return {
        **os.environ,
        "JW_BROKER_URL": broker_url,
        "JW_PARTITIONS": str(partitions),
        "JW_DATA_DIR": data_dir,
        "JW_CONSUMER_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_MS / 1000),
        "JW_CONSUMER_HEARTBEAT_S": str(HEARTBEAT_MS / 1000),
        "JW_CONSUMER_REBALANCE_TIMEOUT_S": str(REBALANCE_TIMEOUT_MS / 1000),
        "JW_CONSUMER_FETCH_MAX_WAIT_MS": str(FETCH_MAX_WAIT_MS),
        **extra,
    }
