"""Small helpers the benchmark suites share."""

from __future__ import annotations

import os

from tests.helpers import free_port

__all__ = ["free_port", "worker_env"]


def worker_env(broker_url: str, data_dir: str, partitions: int, **extra: str) -> dict[str, str]:
    """A benchmark worker's environment (short group time-outs and fetch waits: Tansu)."""
    return {
        **os.environ,
        "JW_BROKER_URL": broker_url,
        "JW_PARTITIONS": str(partitions),
        "JW_DATA_DIR": data_dir,
        "JW_CONSUMER_SESSION_TIMEOUT_S": "3",
        "JW_CONSUMER_HEARTBEAT_S": "0.5",
        "JW_CONSUMER_REBALANCE_TIMEOUT_S": "3",
        "JW_CONSUMER_FETCH_MAX_WAIT_MS": "25",
        **extra,
    }
