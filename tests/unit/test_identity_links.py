"""``identity``/``linked`` outputs: which identifier belongs to which person, from when (the
customer timeline's ``identity_links``), in one process and across partitions."""

from __future__ import annotations

from pipeline.engine import JourneyEngine, Output
from pipeline.touch import Touch
from tests.unit.journeys import CATALOG, T0, M, named, touch

from .test_shard import Cluster, play, touches_of


def links(outputs: list[Output]) -> dict[str, set[str]]:
    """identifier key → the persons it was linked to."""
    found: dict[str, set[str]] = {}
    for o in named(outputs, "identity", "linked"):
        found.setdefault(str(dict(o.detail)["identifier"]), set()).add(o.person_id)
    return found


def test_every_identifier_is_linked_once_to_its_person_and_merges_keep_the_anonymous_links() -> (
    None
):
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    script = [
        touch(0, "home.view", device="d1", event_id="web-1"),
        touch(1 * M, "product.view", device="d1", event_id="web-2"),
        touch(2 * M, "account.login", customer="c1", device="d1", event_id="login"),
        touch(30 * M, "ivr.menu", "call_center", customer="c1", event_id="call", session_hint="k1"),
        touch(90 * M, "store.visit", "store", customer="c1", loyalty="L1", event_id="till"),
    ]
    out: list[Output] = []
    for item in script:
        out += engine.submit(item)
    out += engine.advance(T0 + 100 * M)
    linked = named(out, "identity", "linked")
    assert [(dict(o.detail)["identifier"], o.person_id, o.event_id) for o in linked] == [
        ("device_id:d1", "a:device_id:d1", "web-1"),
        ("customer_id:c1", "c:c1", "login"),
        ("loyalty_id:L1", "c:c1", "till"),
    ]
    assert [o.at for o in linked] == [T0, T0 + 2 * M, T0 + 90 * M]
    assert len({o.output_id for o in linked}) == 3
    merged = named(out, "identity", "merged")
    assert [(dict(o.detail)["from_person"], o.person_id, o.event_id) for o in merged] == [
        ("a:device_id:d1", "c:c1", "login")
    ]
    # the same touches again (a redelivery) link nothing anew
    again: list[Output] = []
    for item in script:
        again += engine.submit(item)
    again += engine.advance(T0 + 200 * M)
    assert named(again, "identity", "linked") == []


def final_person(person: str, merged_into: dict[str, str]) -> str:
    for _ in range(64):
        if person not in merged_into:
            return person
        person = merged_into[person]
    raise AssertionError(f"a merge loop from {person}")


def unlinked_touch_identifiers(outputs: list[Output], touches: list[Touch]) -> list[object]:
    """Identifiers of touches applied to a person that are linked neither to that person nor
    to one merged into it: the customer timeline would miss those touchpoints."""
    by_id = {t.event_id: t for t in touches}
    linked = links(outputs)
    merged_into = {
        str(dict(o.detail)["from_person"]): o.person_id
        for o in named(outputs, "identity", "merged")
    }
    blocked = {
        o.key.removeprefix("blocked:") for o in named(outputs, "identity", "identifier_blocked")
    }
    missing: list[object] = []
    for o in outputs:
        if o.type != "journey" or not o.event_id or o.event_id not in by_id:
            continue
        person = final_person(o.person_id, merged_into)
        for kind, value in by_id[o.event_id].identifiers:
            key = kind + ":" + value
            if key in blocked or (kind == "customer_id" and person != "c:" + value):
                continue
            if person not in {final_person(p, merged_into) for p in linked.get(key, ())}:
                missing.append((key, person, o.event_id))
    return missing


def test_across_partitions_every_identifier_of_a_persons_touches_is_linked_to_it() -> None:
    touches, _ = touches_of(seed=31, personas=200)
    for partitions in (1, 4):
        cluster = Cluster(partitions, seed=partitions)
        play(cluster, touches)
        unique = list({o.output_id: o for o in cluster.outputs}.values())
        assert named(unique, "identity", "merged"), "no merge: the test proves nothing"
        assert not unlinked_touch_identifiers(unique, touches)
        linked = named(unique, "identity", "linked")
        # once per identifier and person
        assert len({o.key for o in linked}) == len(linked)
        identifiers = {k + ":" + v for t in touches for k, v in t.identifiers}
        assert len(linked) <= 2 * len(identifiers)
