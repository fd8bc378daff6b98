"""Segments (pipeline/segment_rules.py): the journeys file's ``segments:``, how a touchpoint is
matched, and the journey's segment, decided by its first touchpoint whatever the arrival order."""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codec import Forward, Handoff, decode_message, encode_message, encode_touch
from pipeline.definitions import DefinitionError, parse_catalog
from pipeline.engine import JourneyState, Output, StateNames
from pipeline.segment_rules import MAX_SEGMENTS, OTHER, SegmentRules, segment_label
from pipeline.simulator import scripted_touches
from pipeline.touch import Touch
from tests.unit.journeys import CATALOG, T0, H, M, S
from tests.unit.test_engine_properties import arrival_order, run

JOURNEYS = """
version: 1
journeys:
  - name: buy
    stages:
      - {name: cart, match: [{touchpoint: "cart.*"}], timeout: 1h}
    goal: [{touchpoint: "order.placed"}]
"""


def catalog(segments: str) -> Any:
    return parse_catalog(JOURNEYS + segments, "my-journeys.yaml")


def problems(segments: str) -> list[str]:
    with pytest.raises(DefinitionError) as raised:
        catalog(segments)
    return [str(p) for p in raised.value.problems]


def test_segments_are_read_from_the_journeys_file_and_match_in_the_files_order() -> None:
    rules = catalog(
        """
segments:
  - name: gold
    description: our best customers
    match: {attributes: {tier: [gold, platinum]}}
  - name: eu_stores
    match: {channel: [store], attributes: {region: EU}}
  - name: store_12
    match: {attributes: {store_id: 12}}
  - name: app_users
    match: {channel: [app]}
"""
    ).segment_rules
    assert rules.names == ("gold", "eu_stores", "store_12", "app_users")
    assert rules.labels() == ("gold", "eu_stores", "store_12", "app_users", OTHER)
    assert rules.segment_of("web", {"tier": "platinum", "region": "EU"}) == "gold"
    assert rules.segment_of("store", {"tier": "silver", "region": "EU"}) == "eu_stores"
    assert rules.segment_of("web", {"region": "EU"}) is None  # not a store
    assert rules.segment_of("web", {"store_id": "12"}) == "store_12"  # compared as text
    assert rules.segment_of("web", {"store_id": 12.0}) == "store_12"
    assert rules.segment_of("app", {}) == "app_users"
    assert rules.segment_of("web", None) is None
    assert rules.segment_of("web", {"tier": None}) is None
    assert segment_label(None) == OTHER and segment_label("gold") == "gold"


def test_a_file_without_segments_has_none() -> None:
    rules = catalog("")
    assert not rules.segment_rules and rules.segment_rules.labels() == (OTHER,)
    assert CATALOG.segment_rules.segment_of("web", {"tier": "gold"}) is None


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        (
            "segments:\n  - {name: Gold, match: {attributes: {tier: gold}}}\n",
            "my-journeys.yaml:9: segments[Gold].name: String should match pattern",
        ),
        (
            "segments:\n  - {name: other, match: {attributes: {tier: gold}}}\n",
            "my-journeys.yaml:9: segments[other].name: 'other' is reserved",
        ),
        (
            "segments:\n  - {name: identified, match: {channel: [web]}}\n",
            "my-journeys.yaml:9: segments[identified].name: 'identified' is reserved",
        ),
        (
            "segments:\n  - {name: gold, match: {}}\n",
            "my-journeys.yaml:9: segments[gold].match: a segment matches by channel and/or",
        ),
        (
            "segments:\n  - {name: gold, match: {channel: [fax]}}\n",
            "my-journeys.yaml:9: segments[gold].match.channel[0]: Input should be",
        ),
        (  # (no channel at all, not every channel: it would claim every journey)
            "segments:\n  - {name: gold, match: {channel: []}}\n",
            "my-journeys.yaml:9: segments[gold].match.channel: Tuple should have at least 1 item",
        ),
        (
            "segments:\n  - {name: gold, match: {attributes: {tier: []}}}\n",
            "my-journeys.yaml:9: segments[gold].match.attributes.tier: "
            "Value should have at least 1 item",
        ),
        (
            "segments:\n  - {name: gold, match: {attributes: {tier: {a: b}}}}\n",
            "my-journeys.yaml:9: segments[gold].match.attributes.tier",
        ),
        (
            "segments:\n  - {name: gold, mach: {attributes: {tier: gold}}}\n",
            "my-journeys.yaml:9: segments[gold].mach: Extra inputs are not permitted",
        ),
        (
            "segments:\n  - {name: a, match: {channel: [web]}}\n"
            "  - {name: a, match: {channel: [app]}}\n",
            "my-journeys.yaml:9: segments: segment names must be unique, repeated: a",
        ),
    ],
)
def test_a_bad_segment_is_reported_with_the_file_the_line_and_the_field(
    segments: str, expected: str
) -> None:
    found = problems(segments)
    assert any(p.startswith(expected) for p in found), found


def test_at_most_twenty_segments_keep_the_label_bounded() -> None:
    many = "".join(
        f"  - {{name: s{n}, match: {{attributes: {{store_id: {n}}}}}}}\n"
        for n in range(MAX_SEGMENTS + 1)
    )
    found = problems("segments:\n" + many)
    assert any(
        p.startswith("my-journeys.yaml:9: segments: Tuple should have at most 20 items")
        for p in found
    ), found
    assert catalog("segments:\n" + many.split("\n", 1)[1]).segment_rules.labels()[-1] == OTHER


def test_touches_take_their_segment_where_they_enter_the_workers() -> None:
    rules = catalog("segments:\n  - {name: gold, match: {attributes: {tier: gold}}}\n")
    data = {
        "event_id": "e1",
        "occurred_at": "2026-11-23T10:00:00+00:00",
        "received_at": "2026-11-23T10:00:01+00:00",
        "channel": "web",
        "touchpoint": "cart.add",
        "action": "add",
        "customer_id": "c-1",
        "attributes": {"tier": "gold"},
    }
    assert Touch.from_canonical(data, rules.segment_rules).segment == "gold"
    assert Touch.from_canonical(data).segment is None
    assert Touch.from_canonical({**data, "attributes": {}}, rules.segment_rules).segment is None


# --- the journey's segment: its first touchpoint's, whatever the arrival order ----------------
SEGMENTS = ("gold", "eu_stores", None, None)


def with_segment(touch: Touch) -> Touch:
    """Each touch in a segment of its own, as if its attributes said so (mixed in one person:
    the journey must still take its first touchpoint's)."""
    return touch._replace(segment=SEGMENTS[zlib.crc32(touch.event_id.encode()) % len(SEGMENTS)])


def generate(seed: int) -> list[Touch]:
    stream = scripted_touches(
        seed,
        t0=T0,
        personas=10,
        gaps_ms=(20 * S, 2 * M, 20 * M, 90 * M, 5 * H),
        error_rate=0.15,
        customer_share=0.6,
        csat_rate=0.2,
    )
    return [with_segment(t) for _, t in stream]


def canonical(outputs: list[Output]) -> list[tuple[str, bytes]]:
    return sorted((o.output_id, orjson.dumps(o.as_dict())) for o in outputs)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9), shuffle=st.integers(0, 10**9))
def test_a_journeys_segment_does_not_depend_on_the_arrival_order(seed: int, shuffle: int) -> None:
    touches = generate(seed)
    arrived = arrival_order(touches, random.Random(shuffle))
    in_order = run(touches)
    assert canonical(run(arrived)) == canonical(in_order)
    # every output of a journey carries one segment: its first touchpoint's (by event time)
    by_id = {t.event_id: t for t in touches}
    segments: dict[str, set[str | None]] = defaultdict(set)
    for output in in_order:
        if output.journey_id and output.type in ("journey", "score", "negative_moment"):
            segments[output.journey_id].add(dict(output.detail).get("segment"))
    for output in in_order:
        if output.type == "journey" and output.name == "started":
            assert output.event_id is not None
            assert segments[output.journey_id or ""] == {by_id[output.event_id].segment}


def test_the_segment_is_kept_in_the_journeys_state_and_old_state_reads_as_none() -> None:
    names = StateNames(CATALOG.journeys, 2, CATALOG.version)
    journey = JourneyState("j1", 0, 0, T0, T0, segment="gold")
    saved = journey.to_list(names)
    assert len(saved) == 17 and saved[-1] == "gold"
    again = JourneyState.from_list(saved, names)
    assert isinstance(again, JourneyState) and again.segment == "gold"
    plain = JourneyState("j2", 0, 0, T0, T0)
    assert len(plain.to_list(names)) == 16  # as every earlier version wrote it
    old = JourneyState.from_list(plain.to_list(names), names)
    assert isinstance(old, JourneyState) and old.segment == ""


def test_the_segment_travels_beside_the_touch_in_hand_off_messages() -> None:
    touch = Touch("e1", T0, "web", "cart.add", "add", segment="gold", received_at=T0 + 5)
    plain = Touch("e2", T0, "web", "cart.add", "add")
    for message in (
        Forward("c:1", touch),
        Forward("c:1", plain),
        Handoff("c:1", None, None, [], [], [touch, plain], None),
        Handoff("c:1", None, None, [], [], [plain], None),
    ):
        raw = encode_message(message)
        assert decode_message(raw) == message
        body = orjson.loads(raw)
        assert list(body)[-1] == "v"
        # a released worker's decoder reads 17 positional fields and ignores the keys beside
        for fields in body.get("touches") or [body["touch"]]:
            assert len(fields) == 17
    assert b"segment" not in encode_message(Forward("c:1", plain))


def test_segment_rules_of_an_empty_file_match_nothing() -> None:
    assert SegmentRules().segment_of("web", {"tier": "gold"}) is None


def test_a_touch_list_with_every_field_takes_only_a_text_as_its_segment() -> None:
    """decode_touch accepts a whole touch's list (19 items: received_at and segment last) as
    well as the 17 a message carries; its segment, like the one beside the touch, is a text or
    None: a number there would reach the journey's state (a str, compiled: TypeError) and its
    outputs' detail.segment."""
    fields = encode_touch(Touch("e1", T0, "web", "cart.add", "add", identifiers=(("d", "x"),)))
    body = {"kind": "forward", "person": "d:x", "v": 1}
    for last, expected in ((7, None), (["gold"], None), ("gold", "gold"), (None, None)):
        raw = orjson.dumps(body | {"touch": [*fields, T0 + 5, last]})
        message = decode_message(raw)
        assert isinstance(message, Forward)
        assert message.touch.segment == expected and message.touch.received_at == T0 + 5
