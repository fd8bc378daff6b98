"""How long the workers keep a person (docs/operations/retention.md, "The workers' state").

A person's journey state leaves the worker's state when the churn window (the journeys
file's ``detectors.churn_after``, 60 days by default) passes without a touchpoint and no
journey of theirs is still open: ``JourneyEngine._on_churn_deadline``. What a worker saves is
a ``JourneyShard``'s records (its Faust table and changelog), checked here.
"""

from __future__ import annotations

from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.shard import JourneyShard
from pipeline.touch import Touch

CATALOG = load_catalog()
DAY = 86_400_000
T0 = 1_795_000_000_000
JANE = (("customer_id", "c1"), ("device_id", "d1"))
OTHER = (("customer_id", "c2"),)


def _shard() -> JourneyShard:
    return JourneyShard(JourneyEngine(CATALOG, allowed_lateness_ms=0), 0, lambda key: 0)


def _after_churn_window(shard: JourneyShard, days: int) -> dict[str, bytes | None]:
    """Jane's two touchpoints, then another customer's ``days`` later (event time moves on
    with the touchpoints); the records saved in the meantime, the latest of each key."""
    saved: dict[str, bytes | None] = {}
    shard.touch(Touch("e1", T0, "web", "home.view", "view", identifiers=JANE), "t1")
    shard.touch(Touch("e2", T0 + 1_000, "web", "product.view", "view", identifiers=JANE), "t2")
    saved |= shard.drain().records
    later = T0 + days * DAY
    shard.touch(Touch("e3", later, "web", "home.view", "view", identifiers=OTHER), "t3")
    shard.touch(Touch("e4", later + 1, "web", "home.view", "view", identifiers=OTHER), "t4")
    saved |= shard.drain().records
    return saved


def test_a_persons_journey_state_leaves_the_worker_after_the_churn_window() -> None:
    shard = _shard()
    assert shard.engine.detectors.churn_after == 60 * DAY
    saved = _after_churn_window(shard, 61)
    assert saved["p:c:c1"] is None
    assert "c:c1" not in shard.engine.persons  # journeys, sessions, scores, recent event ids
    assert shard.engine.person_record("c:c1") is None  # identifiers too: the test below


def test_within_the_churn_window_a_person_is_kept() -> None:
    shard = _shard()
    _after_churn_window(shard, 59)
    assert "c:c1" in shard.engine.persons


def test_a_persons_identifiers_leave_the_worker_after_the_churn_window() -> None:
    shard = _shard()
    saved = _after_churn_window(shard, 61)
    assert saved["p:c:c1"] is None  # a tombstone: deleted from the table and its changelog
    assert shard.graph.person_of("customer_id:c1") is None
