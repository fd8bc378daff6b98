"""The steady middle of a run, timed inside the process that does the work; and the consumer
group timings every benchmark consumer uses on the embedded broker.

No third-party imports: the Quix Streams consumer (``benchmarks/quix_count.py``) uses it from
its own virtual environment, the topology suite's in-process baselines from the main one.
"""

from __future__ import annotations

import time

# The embedded profile's consumer group (Tansu: a group join waits about half the session
# time-out; a fetch is answered only when its wait is over), for the workers
# (``_support.worker_env``) and every baseline alike.
SESSION_TIMEOUT_MS = 3_000
HEARTBEAT_MS = 500
REBALANCE_TIMEOUT_MS = 3_000
FETCH_MAX_WAIT_MS = 25

# A ~250-byte output record's padding (with an event's id, time and touchpoint, and the
# output's number: about 250 bytes as JSON).
PAD = "x" * 108


class SteadyMiddle:
    """Records/s over the steady middle of a run of ``count`` records: from the first moment
    10% of them are done to the first moment 90% are, as ``topology._rate_of`` reads a worker's
    progress (here exactly, not every 0.25 s)."""

    def __init__(self, count: int) -> None:
        self.low, self.high = count // 10, count - count // 10
        self._start: tuple[float, int] | None = None
        self._end: tuple[float, int] | None = None

    def done(self, total: int) -> None:
        """``total`` records are done now."""
        if self._end is not None or total < self.low:
            return
        if self._start is None:
            self._start = (time.perf_counter(), total)
        elif total >= self.high:
            self._end = (time.perf_counter(), total)

    def rate(self) -> float:
        if self._start is None or self._end is None:
            raise RuntimeError("the run did not pass 10% and then 90% of its records")
        (started, first), (ended, last) = self._start, self._end
        return (last - first) / (ended - started)

    def rate_until_now(self, total: int) -> float:
        """Records/s from 10% of the records done to now, when ``total`` are."""
        if self._start is None:
            raise RuntimeError("the run did not pass 10% of its records")
        started, first = self._start
        return (total - first) / (time.perf_counter() - started)
