"""One outcome per journey, revised at most once: a reported drop-off that touchpoints within
``resume_within`` then convert is retracted (``dropoff_retracted``) just before ``converted``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine import JourneyEngine, JourneyState, Output, PersonState
from tests.unit.journeys import CATALOG, T0, H, M, named, touch

PURCHASE = next(d for d in CATALOG.journeys if d.name == "online_purchase")
CART_TIMEOUT = next(s.timeout for s in PURCHASE.stages if s.name == "cart")
RESUME = PURCHASE.resume_within


def purchase(outputs: list[Output]) -> list[Output]:
    return [o for o in named(outputs, "journey") if o.journey == "online_purchase"]


def net_outcome(outputs: list[Output]) -> str:
    """What a consumer of the outputs (deduplicated on output_id) concludes."""
    names = Counter(o.name for o in {o.output_id: o for o in purchase(outputs)}.values())
    assert names["converted"] <= 1 and names["dropped_off"] <= 1, names
    assert names["dropoff_retracted"] <= names["dropped_off"], names
    assert names["dropoff_retracted"] == min(names["dropped_off"], names["converted"]), names
    if names["converted"]:
        return "converted"
    return "dropped_off" if names["dropped_off"] else "active"


def test_a_drop_off_converted_by_a_late_touch_is_retracted_once_just_before_converted() -> None:
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    out = engine.submit(touch(0, "cart.add", action="add", device="late", event_id="c1"))
    out += engine.advance(T0 + CART_TIMEOUT + 1 * M)  # the drop-off is reported
    # the store's confirmation, 40 minutes of event time before the deadline, arrives now
    late = touch(CART_TIMEOUT - 40 * M, "checkout.payment", action="submit", device="late")
    buy = touch(CART_TIMEOUT - 39 * M, "checkout.confirmation", device="late", event_id="buy")
    out += engine.submit(late) + engine.submit(buy)
    again = engine.submit(late) + engine.submit(buy)  # redelivered: nothing new
    out += engine.advance(2**62)
    names = [o.name for o in purchase(out)]
    assert names == [
        "started",
        "dropped_off",
        "resumed",
        "stage_reached",
        "dropoff_retracted",
        "converted",
    ]
    assert purchase(again) == []
    drop = named(out, "journey", "dropped_off")[0]
    retraction = named(out, "journey", "dropoff_retracted")[0]
    assert (retraction.at, retraction.stage, retraction.channel, retraction.journey_id) == (
        drop.at,
        drop.stage,
        drop.channel,
        drop.journey_id,
    )
    assert drop.stage == "cart" and drop.at == T0 + CART_TIMEOUT
    assert dict(retraction.detail) == {
        "retracts": drop.output_id,
        "converted_at": buy.at,
        "converted_event_id": "buy",
    }
    assert (
        retraction.output_id
        == Output("journey", "", f"dropoff_retracted:{drop.journey_id}", 0, "").output_id
    )


def test_a_resumed_journey_that_stalls_again_keeps_its_one_drop_off_and_is_not_retracted() -> None:
    out: list[Output] = []
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    for item in (
        touch(0, "cart.add", action="add", device="again"),
        touch(3 * H, "checkout.payment", action="submit", device="again"),  # resumes
    ):
        out += engine.submit(item)
    out += engine.advance(2**62)  # stalls at payment, then the resume window closes
    names = Counter(o.name for o in purchase(out))
    assert names["dropped_off"] == 1 and names["dropoff_retracted"] == 0
    assert names["converted"] == 0 and names["resumed"] == 1


def test_the_retraction_names_the_drop_off_stage_even_when_the_journey_moved_on() -> None:
    out: list[Output] = []
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    for item in (
        touch(0, "cart.add", action="add", device="moved", channel="app"),
        touch(3 * H, "checkout.payment", "web", action="submit", device="moved"),
        touch(5 * H, "checkout.confirmation", "web", device="moved"),  # after a 2nd stall
    ):
        out += engine.submit(item)
    out += engine.advance(2**62)
    drop = named(out, "journey", "dropped_off")[0]
    retraction = named(out, "journey", "dropoff_retracted")[0]
    assert (drop.stage, drop.channel) == ("cart", "app")
    assert (retraction.at, retraction.stage, retraction.channel) == (drop.at, "cart", "app")
    assert len(named(out, "journey", "dropped_off")) == 1


def test_the_drop_off_survives_a_snapshot_and_state_saved_by_the_previous_code_decodes() -> None:
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    names = engine.state_names
    engine.submit(touch(0, "cart.add", action="add", device="saved", channel="app"))
    engine.advance(T0 + CART_TIMEOUT + 1 * M)
    (person,) = [PersonState.from_bytes(raw, names) for raw in engine.snapshot().values()]
    (journey,) = person.journeys
    assert (journey.dropoff_at, journey.dropoff_stage, journey.dropoff_channel) == (
        T0 + CART_TIMEOUT,
        "cart",
        "app",
    )
    saved = journey.to_list(names)
    assert saved[1:3] == ["online_purchase", "cart"]  # by name
    again = JourneyState.from_list(saved, names)
    assert isinstance(again, JourneyState) and again.to_list(names) == saved

    def decode(data: list[Any]) -> JourneyState:
        decoded = JourneyState.from_list(data, names)
        assert isinstance(decoded, JourneyState)
        return decoded

    # version 1 (positions), in the shape saved before the drop-off fields: 13 items (and 12,
    # before the channel)
    old = [saved[0], 0, 2, *saved[3:13]]
    decoded = decode(old)
    assert (decoded.definition, decoded.stage) == (0, 2)
    assert (decoded.dropoff_at, decoded.dropoff_stage, decoded.dropoff_channel) == (
        T0 + CART_TIMEOUT,
        "cart",
        "app",
    )
    assert decode(old[:12]).dropoff_stage == "cart"
    # version 1 with the drop-off fields: the drop-off's stage as a position
    assert decode([*old, T0 + CART_TIMEOUT, 2, "app"]).dropoff_stage == "cart"
    resumed = list(old)
    resumed[5] = True  # active again after resuming: the drop-off's stage is not known
    decoded = decode(resumed)
    assert (decoded.dropoff_at, decoded.dropoff_stage) == (T0 + CART_TIMEOUT, "")
    never = decode([*old[:5], True, 0, *old[7:]])
    assert never.dropoff_at == 0
    # a journey restored from the old shape still retracts its drop-off when it converts
    restored = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    restored.identity = engine.identity
    person.journeys = [decode(resumed)]
    restored.restore({pid: person.to_bytes(names) for pid in engine.snapshot()})
    out = restored.submit(touch(3 * H, "checkout.confirmation", device="saved"))
    retraction = named(out, "journey", "dropoff_retracted")
    assert len(retraction) == 1 and retraction[0].at == T0 + CART_TIMEOUT
    assert retraction[0].stage == "cart"  # unknown: the current stage stands in


WINDOW = CART_TIMEOUT + RESUME  # the start's journey is forgotten at the earliest then


@settings(max_examples=100, deadline=None)
@given(
    later=st.lists(
        st.tuples(
            st.booleans(),  # a confirmation (the goal), else another cart.add
            st.integers(1, WINDOW - 1),  # its event time, after the start
            st.integers(0, WINDOW - 1),  # the watermark when it arrives (before or after it)
            st.booleans(),  # delivered twice
        ),
        max_size=6,
    ),
)
def test_the_net_outcome_does_not_depend_on_arrival_order_or_delay(
    later: list[tuple[bool, int, int, bool]],
) -> None:
    """A cart started at 0, then cart additions and confirmations of the same customer at
    any event times within the resume window, arriving in any order, early or late, some
    twice, while the journey is still resumable (the watermark has not passed the end of its
    resume window). The truth: converted if any confirmation comes, else dropped off. The
    engine may report a drop-off on the way (a late confirmation), but then retracts it exactly
    once: a consumer that nets retractions out always sees the truth."""
    out = []
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    out += engine.submit(touch(0, "cart.add", action="add", device="p", event_id="start"))
    touches = [
        touch(at, "checkout.confirmation" if goal else "cart.add", device="p", event_id=f"t{i}")
        for i, (goal, at, _, _) in enumerate(later)
    ]
    for arrival, i in sorted((arrival, i) for i, (_, _, arrival, _) in enumerate(later)):
        out += engine.advance(T0 + arrival)
        out += engine.submit(touches[i])
        if later[i][3]:
            out += engine.submit(touches[i])
    out += engine.advance(2**62)
    first = purchase(out)[0].journey_id
    mine = [o for o in out if o.journey_id == first]
    expected = "converted" if any(goal for goal, *_ in later) else "dropped_off"
    assert net_outcome(mine) == expected, [o.name for o in purchase(mine)]
    assert len(mine) == len({o.output_id for o in mine}), "an output emitted twice"
