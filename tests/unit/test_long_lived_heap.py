"""A worker hides the objects that outlive each batch from the cyclic garbage collector and
lets one full collection look at them at intervals (streams/process.LongLivedHeap)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.process import LongLivedHeap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.collect()
    yield
    gc.unfreeze()  # (the next tests of this process collect as usual)
    gc.collect()


def cycle() -> weakref.ref[Node]:
    """A reference cycle only the cyclic collector can free, and a weak reference to it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_what_survived_a_batch_is_frozen_and_a_thaw_collects_its_cycles() -> None:
    clock = Clock()
    heap = LongLivedHeap(600.0, clock)
    held = cycle()
    heap.settle()  # the batch ends with the cycle still alive: frozen
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert held() is not None  # garbage now, but frozen: no collection looks at it
    clock.now = 599.0
    heap.settle()
    gc.collect()
    assert held() is not None
    clock.now = 600.0
    heap.settle()  # due: thawed, collected, frozen again
    assert held() is None


def test_objects_freed_by_reference_counting_are_freed_while_frozen() -> None:
    heap = LongLivedHeap(600.0, Clock())
    node = Node()
    freed = weakref.ref(node)
    heap.settle()
    del node
    assert freed() is None


def test_a_shard_let_go_of_is_collected_with_the_next_batch() -> None:
    heap = LongLivedHeap(600.0, Clock())
    held = cycle()
    heap.settle()
    heap.thaw_soon()
    heap.settle()
    assert held() is None


def test_zero_never_freezes() -> None:
    heap = LongLivedHeap(0.0, Clock())
    heap.settle()
    assert gc.get_freeze_count() == 0
