"""Sessions that follow real contacts: a call is one contact from its start to its wrap-up
however long it lasts, repeat contact and first-contact resolution are judged per contact,
and session gaps and detector thresholds come from the journeys file (issue 21, item 4)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.definitions import DefinitionError, JourneyCatalog, parse_catalog
from pipeline.engine import JourneyEngine, Output, PersonState
from pipeline.touch import Touch
from tests.unit.journeys import CATALOG, T0, D, H, M, S, named, run, touch

DEFAULTS = Path(__file__).resolve().parents[2] / "pipeline" / "defaults" / "journeys.yaml"


def catalog_with(**detectors: Any) -> JourneyCatalog:
    data = yaml.safe_load(DEFAULTS.read_text())
    data["detectors"].update(detectors)
    return parse_catalog(yaml.safe_dump(data), "test.yaml")


def run_with(catalog: JourneyCatalog, touches: list[Touch], until: int) -> list[Output]:
    engine = JourneyEngine(catalog, allowed_lateness_ms=0)
    out: list[Output] = []
    for item in touches:
        out += engine.submit(item)
    return out + engine.advance(T0 + until)


def call(customer: str, at: int, **fields: Any) -> list[Touch]:
    """ivr, a queue, an answered call (17 min of talk), its end (resolved) and a wrap-up, each
    carrying ``fields``: 20 minutes from start to wrap-up."""
    return [
        touch(at, "ivr.menu", "call_center", "select", customer=customer, **fields),
        touch(at + 30 * S, "queue.wait", "call_center", "wait", customer=customer, **fields),
        touch(
            at + 2 * M,
            "agent.talk",
            "call_center",
            "talk",
            customer=customer,
            duration_ms=17 * M,
            **fields,
        ),
        touch(at + 19 * M, "agent.talk", "call_center", "resolve", customer=customer, **fields),
        touch(at + 20 * M, "call.wrap_up", "call_center", "wrap_up", customer=customer, **fields),
    ]


def fcr(out: list[Output]) -> list[tuple[float | None, int]]:
    return [
        (o.value, dict(o.detail)["contacts"]) for o in named(out, "kpi", "first_contact_resolution")
    ]


def test_a_call_whose_wrap_up_comes_18_minutes_after_the_answer_is_one_contact() -> None:
    # The answer carries the talk time; the wrap-up (no call id) comes 18 min after the answer.
    out = run(
        [
            touch(0, "ivr.menu", "call_center", "select", customer="w1", session_hint="c1"),
            touch(1 * M, "agent.talk", "call_center", "talk", customer="w1", duration_ms=17 * M),
            touch(19 * M, "call.wrap_up", "call_center", "wrap_up", customer="w1"),
            touch(19 * M + 1, "agent.talk", "call_center", "resolve", customer="w1"),
        ],
        until=1 * H,
    )
    assert named(out, "negative_moment", "repeat_contact") == []
    assert fcr(out) == [(1.0, 1)]


def test_touchpoints_with_and_without_the_call_id_do_not_split_a_call() -> None:
    hints = ["c1", None, "c1", None, "c1"]
    touches = [t._replace(session_hint=hint) for t, hint in zip(call("w2", 0), hints, strict=True)]
    out = run(touches, until=1 * H)
    assert named(out, "negative_moment", "repeat_contact") == []
    assert fcr(out) == [(1.0, 1)]


def test_a_named_call_is_one_contact_however_long_its_queue() -> None:
    out = run(
        [
            touch(0, "ivr.menu", "call_center", "select", customer="w3", session_hint="c1"),
            touch(1 * M, "queue.wait", "call_center", "wait", customer="w3", session_hint="c1"),
            touch(3 * H, "agent.talk", "call_center", "resolve", customer="w3", session_hint="c1"),
        ],
        until=4 * H,
    )
    assert fcr(out) == [(1.0, 1)]


def test_a_queue_wait_counts_until_the_answer_without_a_call_id() -> None:
    out = run(
        [
            touch(0, "ivr.menu", "call_center", "select", customer="w4"),
            touch(1 * M, "queue.wait", "call_center", "wait", customer="w4", wait_ms=25 * M),
            touch(26 * M, "agent.talk", "call_center", "resolve", customer="w4"),
        ],
        until=1 * H,
    )
    assert fcr(out) == [(1.0, 1)]


def test_one_repeat_contact_per_repeated_call_not_one_per_touchpoint() -> None:
    first = call("w5", 0, session_hint="c1")[:3]  # not resolved on the first call
    again = call("w5", 1 * D, session_hint="c2")
    out = run(first + again, until=2 * D)
    repeats = named(out, "negative_moment", "repeat_contact")
    assert [o.touchpoint for o in repeats] == ["ivr.menu"]
    assert fcr(out) == [(0.0, 2)]


def test_calls_without_a_call_id_are_told_apart_by_the_gap_after_the_end_of_the_first() -> None:
    first = call("w6", 0)[:3]
    again = call("w6", 2 * H)
    out = run(first + again, until=3 * H)
    assert len(named(out, "negative_moment", "repeat_contact")) == 1
    assert fcr(out) == [(0.0, 2)]
    # ... and a call 16 min after the first began, but 1 min after it ended, is the same one
    long_talk = run(
        [
            touch(0, "ivr.menu", "call_center", "select", customer="w7"),
            touch(1 * M, "agent.talk", "call_center", "talk", customer="w7", duration_ms=14 * M),
            touch(16 * M, "agent.talk", "call_center", "resolve", customer="w7"),
        ],
        until=1 * H,
    )
    assert fcr(long_talk) == [(1.0, 1)]


def test_another_call_id_is_another_contact_even_within_the_gap() -> None:
    out = run(
        call("w8", 0, session_hint="c1")[:2] + call("w8", 5 * M, session_hint="c2"),
        until=1 * H,
    )
    assert len(named(out, "negative_moment", "repeat_contact")) == 1
    assert fcr(out) == [(0.0, 2)]


def test_a_journey_that_a_contact_starts_part_way_counts_that_contact_once() -> None:
    out = run(
        [
            # the call's first touchpoint matches no journey; its later ones start the case
            touch(0, "call.start", "call_center", "start", customer="w9", session_hint="c1"),
            touch(1 * M, "queue.wait", "call_center", "wait", customer="w9", session_hint="c1"),
            touch(5 * M, "agent.talk", "call_center", "resolve", customer="w9"),
        ],
        until=1 * H,
    )
    assert fcr(out) == [(1.0, 1)]


# --- the journeys file ----------------------------------------------------------------------


def test_session_gaps_come_from_the_journeys_file_per_channel() -> None:
    touches = [
        touch(0, "ivr.menu", "call_center", "select", customer="g1"),
        touch(40 * M, "agent.talk", "call_center", "resolve", customer="g1"),
    ]
    assert fcr(run_with(CATALOG, touches, 2 * H)) == [(0.0, 2)]  # default gap: 15 min
    catalog = catalog_with(session_gap={"call_center": "1h"})
    assert catalog.detectors.session_gap["call_center"] == 1 * H
    assert catalog.detectors.session_gap["web"] == 30 * M  # channels not named keep theirs
    assert fcr(run_with(catalog, touches, 2 * H)) == [(1.0, 1)]


def test_detector_thresholds_come_from_the_journeys_file() -> None:
    touches = [
        touch(0, "chat.start", "chat", "start", customer="g2", wait_ms=3 * M),
        touch(1 * M, "agent.chat", "chat", "talk", customer="g2", csat=3, nps=7, sentiment=-0.2),
    ]

    def kinds(catalog: JourneyCatalog) -> list[str]:
        return sorted(o.name for o in named(run_with(catalog, touches, 1 * H), "negative_moment"))

    assert kinds(CATALOG) == []
    strict = catalog_with(
        queue_wait={"chat": "2m"},
        low_csat_at_most=3,
        nps_detractor_at_most=7,
        negative_sentiment_at_most=-0.1,
    )
    assert kinds(strict) == ["long_wait", "low_csat", "negative_sentiment", "nps_detractor"]
    assert strict.detectors.queue_waits == {"call_center": 5 * M, "store": 10 * M, "chat": 2 * M}


@pytest.mark.parametrize(
    ("detectors", "where", "message"),
    [
        ({"session_gap": {"fax": "1h"}}, "detectors.session_gap", "unknown channel 'fax'"),
        ({"session_gap": {"web": "soon"}}, "detectors.session_gap.web", "not a duration"),
        ({"queue_wait": {"call_center": "0s"}}, "detectors.queue_wait.call_center", "greater"),
        (
            {"queue_wait": {"call_center": "1m"}, "call_queue_wait": "2m"},
            "detectors",
            "queue_wait.call_center and call_queue_wait both set",
        ),
        ({"low_csat_at_most": 5}, "detectors.low_csat_at_most", "less than or equal to 4"),
        ({"nps_detractor_at_most": 10}, "detectors.nps_detractor_at_most", "less than"),
        ({"negative_sentiment_at_most": 0.5}, "detectors.negative_sentiment_at_most", "less"),
    ],
)
def test_bad_detector_settings_are_reported_by_field(
    detectors: dict[str, Any], where: str, message: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        catalog_with(**detectors)
    (problem,) = caught.value.problems
    assert problem.where == where and message in problem.message, problem
    assert problem.file == "test.yaml" and problem.line > 1


# --- state ------------------------------------------------------------------------------------


def test_a_person_state_saved_before_sessions_followed_contacts_still_loads() -> None:
    """A list in the shape ``PersonState.to_list`` wrote before this change: the session's
    latest touchpoint start (read now as its end) and hint, the last contact and its issue."""
    old = [
        [["00000000000000aa", 2, 0, T0, T0, True, 0, 0.0, 0.0, 4, 1, 0, "call_center"]],
        {"call_center": [T0, "c1"], "web": [T0 - 1 * H, None]},
        [1234567890123],
        None,
        [T0, "billing"],
        None,
        ["ivr.menu/select", T0, 1],
        T0,
        False,
    ]
    names = JourneyEngine(CATALOG).state_names
    state = PersonState.from_list(old, names)
    assert state.session_at == {"call_center": T0, "web": T0 - 1 * H}
    assert state.session_hint == {"call_center": "c1"}  # (a session without a name: none)
    assert state.to_list(names)[3] == old[1]  # saved as it was read
    assert (state.contact_at, state.contact_issue) == (T0, "billing")
    assert PersonState.from_list(state.to_list(names), names).to_list(names) == state.to_list(names)

    def continued(*touches: Touch) -> list[Output]:
        engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
        engine.load_person("c:s1", [old, ["customer_id:s1"]])
        out: list[Output] = []
        for item in touches:
            out += engine.submit(item)
        return out + engine.advance(T0 + 10 * D)

    # the saved call goes on, named or not: still its first contact
    same = continued(
        touch(5 * M, "queue.wait", "call_center", "wait", customer="s1"),
        touch(3 * H, "agent.talk", "call_center", "resolve", customer="s1", session_hint="c1"),
    )
    assert named(same, "negative_moment", "repeat_contact") == [] and fcr(same) == [(1.0, 1)]
    # another call about the same issue: a repeat contact, once
    other = continued(*[t._replace(issue="billing") for t in call("s1", 1 * D, session_hint="c2")])
    assert len(named(other, "negative_moment", "repeat_contact")) == 1
    assert fcr(other) == [(0.0, 2)]


# --- property ---------------------------------------------------------------------------------

LATENESS = 10 * M
GAP = 15 * M  # the default call-centre gap


@st.composite
def calls(draw: st.DrawFn) -> list[list[Touch]]:
    """One person's calls, one after another: each of several touchpoints, with or without
    the call id, with or without durations and queue waits, lasting up to hours. Within a
    call, a touchpoint follows the end of the ones before it within the gap, unless it carries
    the call id that an earlier one carried; calls are more than the gap apart."""
    customer = f"p{draw(st.integers(0, 10**6))}"
    result: list[list[Touch]] = []
    at = T0
    for number in range(draw(st.integers(1, 3))):
        hint = f"call-{customer}-{number}"
        named_call = draw(st.booleans())
        length = draw(st.integers(2, 6))
        touches: list[Touch] = []
        end = at
        hinted = False
        for index in range(length):
            last = index == length - 1
            with_hint = named_call and draw(st.booleans())
            if index:
                bridge = with_hint and hinted
                reach = 4 * H if bridge else end + GAP - at
                at += draw(st.integers(0, max(0, reach)))
            hinted = hinted or with_hint
            duration = draw(st.one_of(st.none(), st.integers(0, 40 * M)))
            wait = draw(st.one_of(st.none(), st.integers(0, 30 * M)))
            touchpoint, action = ("agent.talk", "talk") if index else ("ivr.menu", "select")
            if index and not last and draw(st.booleans()):
                touchpoint, action = "call.wrap_up", "wrap_up"  # matches no journey
            touches.append(
                Touch(
                    f"{hint}-{index}",
                    at,
                    "call_center",
                    touchpoint,
                    action,
                    identifiers=(("customer_id", customer),),
                    session_hint=hint if with_hint else None,
                    duration_ms=duration,
                    wait_ms=wait,
                    issue="billing",
                )
            )
            end = max(end, at + max(duration or 0, wait or 0))
        result.append(touches)
        at = end + GAP + 1 + draw(st.integers(0, 20 * H))
    # the last call resolves the case
    final = result[-1][-1]
    result[-1][-1] = final._replace(action="resolve")
    return result


def run_arrivals(touches: list[Touch]) -> list[Output]:
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=LATENESS)
    out: list[Output] = []
    for item in touches:
        out += engine.submit(item)
    return out + engine.flush() + engine.advance(2**62)


@settings(max_examples=150, deadline=None)
@given(person=calls(), shuffle=st.integers(0, 10**9))
def test_every_call_is_one_contact_and_repeats_once_whatever_the_arrival_order(
    person: list[list[Touch]], shuffle: int
) -> None:
    in_order = sorted((t for c in person for t in c), key=lambda t: (t.at, t.event_id))
    out = run_arrivals(in_order)
    count = len(person)
    repeats = named(out, "negative_moment", "repeat_contact")
    assert len(repeats) == count - 1
    # at most one per call, at its first touchpoint
    assert sorted(o.event_id or "" for o in repeats) == sorted(c[0].event_id for c in person[1:])
    assert fcr(out) == [(1.0 if count == 1 else 0.0, count)]
    # any arrival order within the lateness: the same outputs
    rng = random.Random(shuffle)
    delayed = [(t.at + rng.randrange(LATENESS), t) for t in in_order]
    arrival = [t for _, t in sorted(delayed, key=lambda pair: (pair[0], pair[1].event_id))]
    assert sorted(o.output_id for o in run_arrivals(arrival)) == sorted(o.output_id for o in out)
