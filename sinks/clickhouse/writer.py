"""Batched, idempotent writes to ClickHouse.

Idempotence has two layers:
* each table stores the Kafka topic, partition and offset of its rows; before the first write
  to a partition the writer reads the highest offset already stored and skips anything at or
  below it. An insert of one partition's batch is one atomic block, so a batch re-delivered
  after a crash (offsets not yet committed) is never written twice;
* every insert carries ``insert_deduplication_token`` derived from table, topic, partition and
  offset range, so a retried insert whose first attempt did land is dropped by ClickHouse, in
  the table and in the materialized views it feeds (tests/integration/test_writer_failures.py).

One outcome per journey: after writing ``journey_events`` rows, the writer deletes (a lightweight
``DELETE``) every ``dropped_off`` row that a stored ``dropoff_retracted`` revises: the one a
retraction of the batch names (``detail.retracts``), and a drop-off of the batch whose journey's
retraction is stored already (a drop-off re-emitted after a worker's crash, or arriving from
another partition after its retraction). It runs for the whole batch, written now or skipped as
written before, so a crash between the insert and the delete is repaired by the redelivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
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
        cluster: str | None = None,
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
        # a lightweight DELETE runs on the shards' local tables (not through Distributed)
        self._delete_on = f"{{table}}_local ON CLUSTER '{cluster}'" if cluster else "{table}"

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
            self._settle_retractions(table, columns, batch)
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
        self._settle_retractions(table, columns, batch)
        return len(fresh)

    def _settle_retractions(
        self, table: str, columns: Sequence[str], batch: PartitionBatch
    ) -> None:
        """Delete the ``dropped_off`` rows that stored retractions revise (module docstring)."""
        if table != "journey_events":
            return
        name_at, journey_at = columns.index("name"), columns.index("journey_id")
        output_at, detail_at = columns.index("output_id"), columns.index("detail")
        doomed: set[str] = set()
        drops: dict[str, str] = {}  # journey_id → the batch's drop-off output_id
        for row in batch.rows:
            if row[name_at] == "dropoff_retracted":
                retracts = orjson.loads(row[detail_at] or "{}").get("retracts")
                if retracts:
                    doomed.add(str(retracts))
            elif row[name_at] == "dropped_off":
                drops[str(row[journey_at])] = str(row[output_at])
        if drops:
            retracted = self._with_retries(
                lambda: (
                    self._client.query(
                        f"SELECT DISTINCT journey_id FROM {self._db}.{table} "
                        "WHERE name = 'dropoff_retracted' AND journey_id IN {ids:Array(String)}",
                        parameters={"ids": sorted(drops)},
                    ).result_rows
                ),
                what=f"read the retractions in {table}",
            )
            doomed.update(drops[str(row[0])] for row in retracted if str(row[0]) in drops)
        if not doomed:
            return
        target = f"{self._db}." + self._delete_on.format(table=table)
        self._with_retries(
            lambda: self._client.command(
                f"DELETE FROM {target} WHERE name = 'dropped_off' "
                "AND output_id IN {ids:Array(String)}",
                parameters={"ids": sorted(doomed)},
            ),
            what=f"delete {len(doomed)} retracted drop-offs from {table}",
        )

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
