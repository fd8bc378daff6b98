"""How ``journeywatch run`` supervises its children, as small pieces without processes.

* ``RestartPolicy`` and ``CrashHistory``: a child that dies is started again after an
  exponential back-off (``initial_s`` doubling up to ``max_s``; a child that stayed up for
  ``stable_s`` starts again from ``initial_s``); ``crash_limit`` crashes within ``window_s``
  are a crash loop, which stops the run (or, for the optional local monitoring, ends its
  restarts).
* The run-status file (``JW_DATA_DIR/run-status.json``): the supervisor (``journeywatch run``,
  which serves no HTTP) writes each process's state, restarts and last exit there, atomically
  (a temporary file renamed over it); the sink it started reads it for ``/metrics``
  (``jw_run_restarts_total``) and the live page. The file names the run's pid: a sink that
  another process started (production) ignores a stale file.
* ``rotate_logs``: one log file per process per run, the previous run's kept as ``.log.1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUN_STATUS_FILE = "run-status.json"


@dataclass(frozen=True)
class RestartPolicy:
    initial_s: float = 0.5
    max_s: float = 10.0
    crash_limit: int = 5
    window_s: float = 60.0
    stable_s: float = 60.0  # up this long: the back-off starts again from initial_s

    def delay(self, attempt: int) -> float:
        """The wait before restart number ``attempt + 1`` of a run of quick crashes."""
        return float(min(self.max_s, self.initial_s * 2 ** min(attempt, 62)))


class CrashHistory:
    """One process's crashes: the back-off it has earned, and whether it is crash-looping."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self._times: deque[float] = deque()

    def crashed(self, now: float, uptime_s: float) -> float | None:
        """Record a crash at ``now`` (monotonic seconds) of a process that had been up for
        ``uptime_s``: the delay before starting it again, or None when this is the
        ``crash_limit``-th crash within ``window_s`` (a crash loop: do not restart)."""
        if uptime_s >= self.policy.stable_s:
            self.attempt = 0
        self._times.append(now)
        while self._times and self._times[0] <= now - self.policy.window_s:
            self._times.popleft()
        if len(self._times) >= self.policy.crash_limit:
            return None
        delay = self.policy.delay(self.attempt)
        self.attempt += 1
        return delay

    @property
    def recent(self) -> int:
        """Crashes counted in the current window (as of the last one)."""
        return len(self._times)


def describe_exit(code: int) -> str:
    """``exit 1``, or ``signal SIGKILL (exit -9)`` for a process a signal ended."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"signal {name} (exit {code})"
    return f"exit {code}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace ``path`` with ``status`` as JSON atomically: a reader sees the old or the new."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(status, indent=1, sort_keys=True))
    os.replace(temporary, path)


def read_status(path: Path, run_pid: int | None) -> dict[str, Any] | None:
    """The run-status file, if it exists and (``run_pid`` given) belongs to that run."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or not isinstance(status.get("processes"), dict):
        return None
    if run_pid is not None and status.get("pid") != run_pid:
        return None
    return status


def restarts_by_process(status: dict[str, Any] | None) -> dict[str, int]:
    if not status:
        return {}
    return {
        str(name): int(process.get("restarts", 0))
        for name, process in status["processes"].items()
        if isinstance(process, dict)
    }


def live_summary(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the live page shows of the run: each process's state, restarts and last exit
    (no time stamps that change without an event, so the figures change only on one)."""
    if not status:
        return None
    processes = []
    for name, process in sorted(status["processes"].items()):
        if not isinstance(process, dict):
            continue
        processes.append(
            {
                "process": name,
                "state": process.get("state"),
                "restarts": int(process.get("restarts", 0)),
                "last_exit": process.get("last_exit"),
            }
        )
    return {"state": status.get("state"), "processes": processes}


def rotate_logs(log_dir: Path) -> list[Path]:
    """Start a run's logs empty: each ``NAME.log`` of the previous run becomes
    ``NAME.log.1`` (replacing the one before). The rotated files."""
    rotated = []
    for log in sorted(log_dir.glob("*.log")):
        with contextlib.suppress(OSError):
            log.replace(log.with_name(log.name + ".1"))
            rotated.append(log)
    return rotated
