"""The Faust internals journeywatch copies, replaces or wraps are the ones it was written against.

streams/faust_internals.py changes how Faust 0.15 fetches, commits, recovers tables and saves
table records (its table says why, with the upstream issues). ``constraints.txt`` pins the
Faust they were checked against, but ``pyproject.toml`` allows any 0.15.x: when a newer one
changes one of these functions, this test names it and the journeywatch code to compare with
it. Compare, adapt that code if needed, run the topology tests (tests/e2e/test_topology.py),
then record the new digest here.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from faust.stores.base import Store as BaseStore
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
from faust.types import ConsumerMessage, Message
from mode import Worker

# (Faust's function, what in journeywatch depends on it, sha256 of its dedented source [:16])
CHECKED: list[tuple[Callable[..., Any], str, str]] = [
    (
        Consumer._drain_messages,
        "streams/faust_internals._drain_in_batches copies it",
        "8f35dd7a11144daa",
    ),
    (Consumer.getmany, "streams/faust_internals._fetched copies it", "e486c434b7928ee8"),
    (
        Consumer._new_offset,
        "streams/faust_internals.never_commit_over_unacknowledged replaces it",
        "2b29afe4dd9a65a3",
    ),
    (
        Consumer.track_message,
        "streams/faust_internals.never_commit_over_unacknowledged wraps it",
        "e43b88ec93553217",
    ),
    (
        Consumer.perform_seek,
        "streams/faust_internals.never_commit_over_unacknowledged wraps it",
        "2b4ceebd23deb7ee",
    ),
    (Message.ack, "streams/faust_internals.acknowledge does as it does", "3c9ee05236d3fe1f"),
    (Message.decref, "streams/faust_internals.acknowledge does as it does", "15b30eed4f4bb53c"),
    (
        ConsumerMessage.on_final_ack,
        "streams/faust_internals.acknowledge does as it does",
        "818bf19da0010b2e",
    ),
    (Consumer.ack, "streams/faust_internals.acknowledge does as it does", "5548cf0f75843f73"),
    (
        Recovery._build_highwaters,
        "streams/faust_internals.confirm_table_recovery_highwaters wraps it",
        "32d70220d2a8a96f",
    ),
    (
        AIOKafkaConsumerThread._create_worker_consumer,
        "streams/faust_internals.use_fetch_max_wait wraps it",
        "c179c0bdb9755c3a",
    ),
    (
        Consumer._wait_next_records,
        "streams/faust_internals._fetched (a copy of getmany) calls it",
        "ba40cd3671328d3b",
    ),
    (
        Consumer._to_message,
        "streams/faust_internals._fetched (a copy of getmany) calls it",
        "7e4aa9dd63259ef7",
    ),
    (
        Collection._send_changelog,
        "streams/batching.TableWriter sends the changelog as it does",
        "2fa0cb7eb2b2911e",
    ),
    (
        Collection.send_changelog,
        "streams/batching.TableWriter sends the changelog as it does (one record per key)",
        "78a5e11370efe43a",
    ),
    (
        Collection._on_changelog_sent,
        "streams/batching.TableWriter records the persisted offset as it does",
        "146c7ea5c7530a94",
    ),
    (
        RocksDBStore._db_for_partition,
        "streams/faust_internals.open_store_partition and write_partition call it",
        "abc425297c7542f0",
    ),
    (
        Producer._ensure_producer,
        "streams/faust_internals.faust_producer calls it",
        "04016bd22147281a",
    ),
    (
        Worker._schedule_shutdown,
        "streams/faust_internals.QuietWorker extends it",
        "00f5a7d8fd26e62f",
    ),
    (
        BaseStore._encode_key,
        "streams/faust_internals.encode_key calls it",
        "33cb92d4d0b83da7",
    ),
    (
        BaseStore._encode_value,
        "streams/faust_internals.encode_value calls it",
        "24aca27438303d5e",
    ),
    (
        RocksDBStore._set,
        "streams/faust_internals.write_partition writes as it does",
        "40e273d6ef07db1e",
    ),
    (
        RocksDBStore._del,
        "streams/faust_internals.write_partition deletes as it does",
        "2bb45852bef57237",
    ),
    (
        RocksDBStore.set_persisted_offset,
        "streams/batching.TableWriter records offsets with it",
        "6fd1e96c0809530b",
    ),
    (
        RocksDBStore.apply_changelog_batch,
        "streams/faust_internals.write_partition writes batches as it does",
        "67ac93a2bea2a488",
    ),
]


def digest(function: Callable[..., Any]) -> str:
    source = textwrap.dedent(inspect.getsource(function))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("function", "used_by", "expected"), CHECKED, ids=[f.__qualname__ for f, _, _ in CHECKED]
)
def test_faust_internals_are_the_ones_journeywatch_was_checked_against(
    function: Callable[..., Any], used_by: str, expected: str
) -> None:
    found = digest(function)
    assert found == expected, (
        f"Faust's {function.__module__}.{function.__qualname__} is not the one journeywatch "
        f"was checked against ({used_by}): compare the two, adapt journeywatch if needed, run "
        f"tests/e2e/test_topology.py, then set its digest in {__name__} to {found}"
    )
