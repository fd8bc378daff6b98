"""Child processes that cannot outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1

# The journey engine keeps many small long-lived objects, the collector allocates hundreds per
# request; Python's default young-generation threshold (700) makes the garbage collector take
# about a third of the engine's time (docs/benchmarks.md).
GC_THRESHOLDS = (50_000, 20, 100)


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
