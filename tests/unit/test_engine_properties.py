"""Properties of the journey engine over generated multi-person, multi-channel streams."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine import JourneyEngine, Output
from pipeline.simulator import scripted_touches
from pipeline.touch import Touch
from tests.unit.journeys import CATALOG, T0, H, M, S

LATENESS = 10 * M


def generate(seed: int, personas: int = 12) -> list[tuple[int, Touch]]:
    """(persona, touch) pairs in event-time order, with identity links and failures; gaps
    long enough that some journeys drop off, resume or time out between steps."""
    return scripted_touches(
        seed,
        t0=T0,
        personas=personas,
        gaps_ms=(20 * S, 2 * M, 20 * M, 90 * M, 5 * H),
        error_rate=0.15,
        customer_share=0.6,
        csat_rate=0.2,
    )


def run(touches: list[Touch], channel_lateness_ms: dict[str, int] | None = None) -> list[Output]:
    engine = JourneyEngine(
        CATALOG, allowed_lateness_ms=LATENESS, channel_lateness_ms=channel_lateness_ms
    )
    out: list[Output] = []
    for item in touches:
        out += engine.submit(item)
        assert kept_active(engine) == walk_active(engine)
    out += engine.flush()
    out += engine.advance(2**62)
    assert kept_active(engine) == walk_active(engine)
    return out


def kept_active(engine: JourneyEngine) -> tuple[int, dict[tuple[int, int], int]]:
    """The active journeys as the engine keeps their counts: in all, and per definition and
    stage (the gauge)."""
    return engine.active_journeys(), engine.active_by_stage()


def walk_active(engine: JourneyEngine) -> tuple[int, dict[tuple[int, int], int]]:
    """The active journeys counted the long way, over every person (``kept_active``)."""
    by_stage: Counter[tuple[int, int]] = Counter(
        (j.definition, j.stage)
        for p in engine.persons.values()
        for j in p.journeys
        if j.status == "active"
    )
    return sum(by_stage.values()), dict(by_stage)


def canonical(outputs: list[Output]) -> list[tuple[object, ...]]:
    return sorted((o.output_id, repr(o)) for o in outputs)


def arrival_order(touches: list[Touch], rng: random.Random) -> list[Touch]:
    """Each touch delayed by less than the allowed lateness."""
    return [
        t
        for _, t in sorted(
            ((t.at + rng.randrange(LATENESS), t) for t in touches), key=lambda x: x[0]
        )
    ]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9), shuffle=st.integers(0, 10**9))
def test_order_within_the_lateness_does_not_change_the_outcome(seed: int, shuffle: int) -> None:
    touches = [t for _, t in generate(seed)]
    assert canonical(run(arrival_order(touches, random.Random(shuffle)))) == canonical(run(touches))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9), picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_duplicates_change_nothing(seed: int, picks: list[int]) -> None:
    touches = [t for _, t in generate(seed)]
    duplicated = list(touches)
    for pick in picks:
        original = touches[pick % len(touches)]
        duplicated.insert(duplicated.index(original) + 1 + pick % 3, original)
    assert canonical(run(sorted(duplicated, key=lambda t: t.at))) == canonical(run(touches))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9))
def test_every_journey_ends_exactly_once_and_never_drops_before_its_time_out(seed: int) -> None:
    stream = generate(seed)
    outputs = run([t for _, t in stream])
    by_journey: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outputs:
        if o.type == "journey" and o.journey_id:
            by_journey[o.journey_id][o.name] += 1
    assert by_journey, "the generated stream starts journeys"
    for journey_id, names in by_journey.items():
        assert names["started"] == 1, (journey_id, names)
        assert names["dropped_off"] <= 1 and names["converted"] <= 1, (journey_id, names)
        assert names["converted"] + names["dropped_off"] + names["merged"] >= 1, (journey_id, names)
    definitions = {d.name: d for d in CATALOG.journeys}
    matcher = JourneyEngine(CATALOG)._compute_matches
    for drop in (o for o in outputs if o.name == "dropped_off"):
        definition = definitions[drop.journey or ""]
        index = next(i for i, d in enumerate(CATALOG.journeys) if d.name == definition.name)
        timeout = next(s.timeout for s in definition.stages if s.name == drop.stage)
        persona_touches = {
            p
            for p, t in stream
            if (t.event_id in {o.event_id for o in outputs if o.journey_id == drop.journey_id})
        }
        for persona, touch in stream:
            if persona in persona_touches and any(
                m[0] == index
                for m in matcher(touch.touchpoint, touch.action, touch.channel, touch.outcome)
            ):
                assert not drop.at - timeout < touch.at <= drop.at, (drop, touch)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**9), size=st.integers(1, 20))
def test_batched_submission_gives_the_same_outcome(seed: int, size: int) -> None:
    touches = [t for _, t in generate(seed)]
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=LATENESS)
    out: list[Output] = []
    for start in range(0, len(touches), size):
        out += engine.submit_batch(touches[start : start + size])
        assert kept_active(engine) == walk_active(engine)
    out += engine.flush() + engine.advance(2**62)
    assert kept_active(engine) == walk_active(engine)
    assert canonical(out) == canonical(run(touches))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**9), moves=st.integers(0, 10**9))
def test_the_active_journey_count_follows_hand_offs_erasures_and_restores(
    seed: int, moves: int
) -> None:
    """``active_journeys`` (kept as journeys change) equals the walk over every person, also
    when persons are handed over and back, taken over by another (a merge), forgotten, their
    state dropped, or restored from a snapshot."""
    rng = random.Random(moves)
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=LATENESS)
    for _, touch in generate(seed):
        engine.submit(touch)
        assert kept_active(engine) == walk_active(engine)
        persons = sorted(engine.persons)
        if not persons or rng.random() > 0.15:
            continue
        person = rng.choice(persons)
        move = rng.randrange(5)
        if move == 0:  # handed over and back
            record, _, held = engine.extract(person)
            if record is not None:
                engine.load_person(person, record)
            engine.apply_now(held)
        elif move == 1:  # taken over by another person: merged into it
            record, members, held = engine.extract(person)
            target = rng.choice(persons)
            engine.absorb(person, target, record, members, touch.at, touch.event_id)
            engine.apply_now(held)
        elif move == 2:  # erased, or its churn window passed
            engine.forget(person)
        elif move == 3:  # its state let go of (a record that failed to load)
            engine.drop_person(person)
        else:
            restored = JourneyEngine(CATALOG, allowed_lateness_ms=LATENESS)
            restored.restore(engine.snapshot())
            assert kept_active(restored) == walk_active(restored) == walk_active(engine)
        assert kept_active(engine) == walk_active(engine)
    engine.flush()
    engine.advance(2**62)
    assert kept_active(engine) == walk_active(engine)


def test_a_late_touch_in_a_batch_does_not_rewind_the_deadline_sequence() -> None:
    """A late touch of a batch is applied at once, and queues deadlines: the batch's own
    sequence numbers follow them (they were rewound, two deadlines shared a queue key, and
    firing the second raised KeyError)."""
    engine = JourneyEngine(CATALOG)
    engine.submit(
        Touch("1", T0 + 10 * M, "web", "home.view", "view", identifiers=(("customer_id", "a"),))
    )
    engine.advance(T0 + 10 * M)
    for event_id, customer in (("2", "b"), ("3", "c")):  # late: applied at once
        touch = Touch(
            event_id,
            T0 + 5 * M,
            "web",
            "home.view",
            "view",
            identifiers=(("customer_id", customer),),
        )
        engine.submit_batch([touch])
    keys = engine._deadlines + list(engine._lane_keys)
    assert len(set(keys)) == len(keys)
    assert {o.name for o in engine.advance(2**62) if o.type == "journey"} >= {"dropped_off"}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**9), size=st.integers(1, 20), jumps=st.integers(0, 10**9))
def test_batches_with_late_touches_give_what_touch_by_touch_gives(
    seed: int, size: int, jumps: int
) -> None:
    """The watermark moved on between batches (``advance``), so that some touches are late:
    batched or one at a time, the same outputs and the same state."""
    touches = [t for _, t in generate(seed)]
    rng = random.Random(jumps)
    moves = {
        start: touches[min(len(touches) - 1, start + rng.randrange(2 * size + 1))].at
        for start in range(0, len(touches), size)
        if rng.random() < 0.5
    }
    batched = JourneyEngine(CATALOG, allowed_lateness_ms=LATENESS)
    single = JourneyEngine(CATALOG, allowed_lateness_ms=LATENESS)
    out: list[Output] = []
    expected: list[Output] = []
    for start in range(0, len(touches), size):
        batch = touches[start : start + size]
        out += batched.submit_batch(batch)
        for touch in batch:
            expected += single.submit(touch)
        if start in moves:
            out += batched.advance(moves[start])
            expected += single.advance(moves[start])
    for engine, found in ((batched, out), (single, expected)):
        found += engine.flush() + engine.advance(2**62)
        assert kept_active(engine) == walk_active(engine)
    assert canonical(out) == canonical(expected)
    names = batched.state_names
    assert {p: s.to_bytes(names) for p, s in batched.persons.items()} == {
        p: s.to_bytes(names) for p, s in single.persons.items()
    }
