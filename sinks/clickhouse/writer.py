"""Batched, idempotent writes to ClickHouse.

Idempotence has two layers:
* each table stores the Kafka topic, partition and offset of its rows; before the first write
  to a partition the writer reads the highest offset already stored and skips anything at or
  below it. An insert of one partition's batch is one atomic block, so a batch re-delivered
  after a crash (offsets not yet committed) is never written twice;
* every insert carries ``insert_deduplication_token`` derived from table, topic, partition and
  offset range, so a retried insert whose first attempt did land is dropped by ClickHouse, in
  the table and in the materialized views it feeds (tests/integration/test_writer_failures.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionBatch:
    """Rows from one Kafka partition, in offset order."""

    topic: str
    topic_id: str
    partition: int
    offsets: Sequence[int]
    rows: Sequence[Sequence[Any]]


class ClickHouseWriter:
    def __init__(
        self,
        client: Client,
        database: str,
        *,
        retries: int = 8,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        on_result: Callable[[str, int, float, bool], None] | None = None,
        distributed: bool = False,
    ) -> None:
        self._client = client
        self._db = database
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._high_water: dict[tuple[str, str, str, int], int] = {}
        self._on_result = on_result
        # Through a Distributed table the insert must reach the shards before it returns, or
        # "written" would mean "queued on this node" and the offsets would be committed early.
        # A retried insert that did land is dropped by the table (same token) and, with the
        # second setting, by the materialized views fed from it: their rollups count it once.
        self._insert_settings: dict[str, Any] = {
            "async_insert": 0,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
        }
        if distributed:
            self._insert_settings["distributed_foreground_insert"] = 1

    def forget_positions(self) -> None:
        """Drop cached high-water marks (after a rebalance another sink may have written)."""
        self._high_water.clear()

    def _stored_high_water(self, table: str, batch: PartitionBatch) -> int:
        key = (table, batch.topic, batch.topic_id, batch.partition)
        if key not in self._high_water:
            result = self._with_retries(
                lambda: self._client.query(
                    f"SELECT max(kafka_offset), count() FROM {self._db}.{table} "
                    "WHERE kafka_topic = {t:String} AND kafka_topic_id = {i:String} "
                    "AND kafka_partition = {p:UInt16}",
                    parameters={"t": batch.topic, "i": batch.topic_id, "p": batch.partition},
                ).result_rows[0],
                what=f"read the high-water mark of {table}",
            )
            self._high_water[key] = int(result[0]) if int(result[1]) else -1
        return self._high_water[key]

    def write(self, table: str, columns: Sequence[str], batch: PartitionBatch) -> int:
        """Write the rows of ``batch`` not yet in ``table``; returns how many were written."""
        high_water = self._stored_high_water(table, batch)
        fresh = [
            row
            for offset, row in zip(batch.offsets, batch.rows, strict=True)
            if offset > high_water
        ]
        if not fresh:
            return 0
        first = batch.offsets[len(batch.offsets) - len(fresh)]
        last = batch.offsets[-1]
        token = f"{table}:{batch.topic}:{batch.topic_id}:{batch.partition}:{first}-{last}"
        started = time.perf_counter()
        ok = False
        try:
            self._with_retries(
                lambda: self._client.insert(
                    f"{self._db}.{table}",
                    fresh,
                    column_names=list(columns),
                    settings={"insert_deduplication_token": token, **self._insert_settings},
                ),
                what=f"insert {len(fresh)} rows into {table}",
            )
            ok = True
        finally:
            if self._on_result:
                self._on_result(table, len(fresh), time.perf_counter() - started, ok)
        self._high_water[(table, batch.topic, batch.topic_id, batch.partition)] = last
        return len(fresh)

    def _with_retries(self, action: Callable[[], Any], what: str) -> Any:
        delay = self._backoff_s
        for attempt in range(1, self._retries + 1):
            try:
                return action()
            except Exception as exc:
                if attempt == self._retries:
                    raise
                log.warning(
                    "clickhouse call failed, retrying",
                    extra={"what": what, "attempt": attempt, "error": str(exc), "delay_s": delay},
                )
                time.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
        raise AssertionError("unreachable")  # pragma: no cover
