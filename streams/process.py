"""Child processes that cannot outlive the process that started them."""

from __future__ import annotations

import ctypes
import gc
import logging
import signal
import sys
import time
from typing import Any

_PR_SET_PDEATHSIG = 1

# The journey engine keeps many small long-lived objects, the collector allocates hundreds per
# request; Python's default young-generation threshold (700) makes the garbage collector take
# about a third of the engine's time (docs/benchmarks.md).
GC_THRESHOLDS = (50_000, 20, 100)

log = logging.getLogger(__name__)


class LongLivedHeap:
    """Keep the cyclic garbage collector off the objects that outlive a batch.

    A journey worker holds its journey state as millions of small long-lived objects (about
    three per person), and every collection of an older generation walks them all: a full
    collection took 1.2 s with a million persons here, and each of the frequent middle ones
    walks up to a million survivors. The engine makes no reference cycles (a full collection
    after building a million persons found none) and its objects are freed by reference
    counting, which freezing does not stop. So ``settle``, after each batch, freezes what
    survived it (``gc.freeze``: O(1), the objects are kept and stay freeable by reference
    counting; collections no longer walk them), and every ``thaw_every_s`` first thaws them
    and runs one full collection, for cycles that other code (the event loop, the Kafka
    client) may have left among them. Measured on the worker's own work (benchmarks/
    topology.py, one process): about a fifth more touchpoints per CPU second, as with the
    collector switched off.
    """

    def __init__(self, thaw_every_s: float, clock: Any = time.monotonic) -> None:
        self.thaw_every_s = thaw_every_s
        self._clock = clock
        self._thawed = clock()

    def thaw_soon(self) -> None:
        """Let the next ``settle`` thaw and collect: something large was let go of (a shard
        rebuilt or revoked), whose cycles, if any, should not wait for the interval."""
        self._thawed = float("-inf")

    def settle(self) -> None:
        """After a batch: freeze what survived it; thaw and collect everything when due."""
        if not self.thaw_every_s:
            return
        now = self._clock()
        if now - self._thawed >= self.thaw_every_s:
            self._thawed = now
            gc.unfreeze()
            started = time.perf_counter()
            found = gc.collect()
            log.info(
                "full garbage collection of the long-lived objects",
                extra={"unreachable": found, "seconds": round(time.perf_counter() - started, 3)},
            )
        gc.freeze()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def child_process_options() -> dict[str, Any]:
    """Popen options: own session (Ctrl-C reaches only the supervisor, which stops children in
    order) and, on Linux, SIGTERM to the child when its parent dies."""
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _die_with_parent
    return options


def use_uvloop() -> bool:
    """Run this process's asyncio loops on uvloop (libuv) when it is installed: the HTTP
    collector answers about a third more requests per core with it. True if it is in use."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - it is a dependency; stay correct without it
        return False
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
