"""The active-journeys gauge comes from counts the engines keep, not from a walk over every
person; it must say what such a walk would."""

from __future__ import annotations

from collections import Counter

import orjson
from prometheus_client import REGISTRY

from streams.journeys import JourneyRole
from tests.unit.journeys import CATALOG, T0, M
from tests.unit.test_journey_error_policy import FakeMessage, event, make_role, run


def visit(role: JourneyRole, event_id: str, at: int, customer: str, touchpoint: str) -> FakeMessage:
    body = orjson.dumps(event(event_id, at, customer, touchpoint))
    return FakeMessage(role.by_person, body)


def walked(role: JourneyRole) -> Counter[tuple[str, str]]:
    """Active journeys per journey and stage, the long way: every person of every shard."""
    found: Counter[tuple[str, str]] = Counter()
    for shard in role.shards.values():
        for person in shard.engine.persons.values():
            for journey in person.journeys:
                if journey.status == "active":
                    definition = CATALOG.journeys[journey.definition]
                    found[(definition.name, definition.stages[journey.stage].name)] += 1
    return found


def gauged() -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for definition in CATALOG.journeys:
        for stage in definition.stages:
            labels = {"journey": definition.name, "stage": stage.name}
            value = REGISTRY.get_sample_value("jw_active_journeys", labels)
            assert value is not None, labels  # every series exists, at 0 when none
            if value:
                found[(definition.name, stage.name)] = int(value)
    return found


def test_the_active_journeys_gauge_says_what_a_walk_over_every_person_says() -> None:
    role, _, _ = make_role()
    run(
        role,
        visit(role, "a1", T0, "alice", "home.view"),  # awareness
        visit(role, "b1", T0 + 1, "bob", "home.view"),
        visit(role, "b2", T0 + 2, "bob", "product.view"),  # on to consideration
        visit(role, "c1", T0 + 3, "carol", "home.view"),
        visit(role, "c2", T0 + 4, "carol", "checkout.confirmation"),  # converted: not active
        visit(role, "d1", T0 + M, "dave", "home.view"),  # moves the watermark past the rest
    )
    role._refresh_shard_gauges()
    expected = walked(role)
    assert expected[("online_purchase", "awareness")] >= 1
    assert expected[("online_purchase", "consideration")] == 1
    assert gauged() == expected
