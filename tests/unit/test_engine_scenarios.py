"""Scenario tests: every default journey, every negative-moment kind, identity, state."""

from __future__ import annotations

import pytest

from pipeline.definitions import DefinitionError, load_catalog, parse_catalog
from pipeline.engine import JourneyEngine, Output, PersonState
from pipeline.experience import NEGATIVE_INTENSITY, peak_end_score
from pipeline.settings import Settings
from tests.unit.journeys import CATALOG, T0, D, H, M, S, named, run, touch


def journey_names(outputs: list[Output], name: str) -> list[tuple[str | None, str | None]]:
    return [(o.journey, o.stage) for o in named(outputs, "journey", name)]


def test_online_purchase_converts_with_stages_time_and_a_good_score() -> None:
    out = run(
        [
            touch(0, "home.view", device="d1"),
            touch(1 * M, "product.view", device="d1"),
            touch(2 * M, "cart.add", action="add", device="d1"),
            touch(
                3 * M,
                "checkout.payment",
                action="submit",
                customer="c1",
                device="d1",
                revenue=49.9,
                currency="EUR",
            ),
            touch(4 * M, "checkout.confirmation", customer="c1", csat=5),
        ],
        until=5 * M,
    )
    assert journey_names(out, "started") == [("online_purchase", "awareness")]
    assert [s for _, s in journey_names(out, "stage_reached")] == [
        "consideration",
        "cart",
        "payment",
    ]
    assert journey_names(out, "converted") == [("online_purchase", "payment")]
    assert named(out, "journey", "dropped_off") == []
    conversion = named(out, "kpi", "conversion")
    assert [o.value for o in conversion] == [240.0]
    score = named(out, "score")
    assert len(score) == 1 and score[0].value == peak_end_score(0.8, 0.8) and score[0].value > 50
    assert [o.value for o in named(out, "kpi", "ltv_increment")] == [49.9]
    # The journey began anonymously; after the login it is the customer's, under the same id.
    assert named(out, "journey", "converted")[0].person_id == "c:c1"
    assert len({o.journey_id for o in named(out, "journey")}) == 1
    assert [dict(o.detail)["from_person"] for o in named(out, "identity", "merged")] == [
        "a:device_id:d1"
    ]


def test_drop_off_fires_once_at_the_stage_time_out_and_not_before() -> None:
    touches = [
        touch(0, "home.view", device="d2"),
        touch(1 * M, "cart.add", action="add", device="d2"),
    ]
    cart_timeout = 2 * H
    before = run(touches, until=1 * M + cart_timeout - 1)
    assert named(before, "journey", "dropped_off") == []
    at = run(touches, until=1 * M + cart_timeout)
    assert journey_names(at, "dropped_off") == [("online_purchase", "cart")]
    assert named(at, "journey", "dropped_off")[0].at == T0 + 1 * M + cart_timeout
    later = run(touches, until=30 * D)
    assert len(named(later, "journey", "dropped_off")) == 1


def test_activity_after_a_drop_off_resumes_and_can_still_convert_without_a_second_drop() -> None:
    out = run(
        [
            touch(0, "cart.add", action="add", device="d3"),
            touch(3 * H, "checkout.payment", action="submit", device="d3"),
            touch(3 * H + 1 * M, "checkout.confirmation", device="d3"),
        ]
    )
    assert [o.name for o in named(out, "journey") if o.journey == "online_purchase"] == [
        "started",
        "dropped_off",
        "resumed",
        "stage_reached",
        "dropoff_retracted",
        "converted",
    ]


def test_browse_online_buy_in_store_is_stitched_across_web_app_and_store() -> None:
    out = run(
        [
            touch(0, "store_locator.search", device="d4"),
            touch(
                10 * M, "account.login", channel="app", action="login", customer="c4", device="d4"
            ),
            touch(20 * M, "profile.view", channel="app", customer="c4", loyalty="L4"),
            touch(2 * H, "store.visit", channel="store", action="enter", loyalty="L4"),
            touch(
                2 * H + 20 * M,
                "till.purchase",
                channel="store",
                action="pay",
                loyalty="L4",
                revenue=120.0,
                currency="EUR",
            ),
        ],
        until=3 * H,
    )
    converted = named(out, "journey", "converted")
    assert [(o.journey, o.person_id) for o in converted] == [("browse_online_buy_in_store", "c:c4")]
    merges = named(out, "identity", "merged")
    assert [dict(o.detail)["from_person"] for o in merges] == ["a:device_id:d4"]
    assert named(out, "journey", "dropped_off") == []


def test_support_case_first_contact_resolution() -> None:
    resolved_first = run(
        [
            touch(0, "ivr.menu", "call_center", "select", customer="c5", session_hint="call-1"),
            touch(
                1 * M,
                "agent.talk",
                "call_center",
                "resolve",
                customer="c5",
                session_hint="call-1",
                csat=4,
            ),
        ],
        until=2 * M,
    )
    assert [o.value for o in named(resolved_first, "kpi", "first_contact_resolution")] == [1.0]
    second_call = run(
        [
            touch(0, "ivr.menu", "call_center", "select", customer="c6", session_hint="call-1"),
            touch(1 * M, "agent.talk", "call_center", "talk", customer="c6", session_hint="call-1"),
            touch(1 * D, "ivr.menu", "call_center", "select", customer="c6", session_hint="call-2"),
            touch(
                1 * D + 5 * M,
                "agent.talk",
                "call_center",
                "resolve",
                customer="c6",
                session_hint="call-2",
            ),
        ],
        until=2 * D,
    )
    assert [o.value for o in named(second_call, "kpi", "first_contact_resolution")] == [0.0]
    assert len(named(second_call, "negative_moment", "repeat_contact")) == 1


def test_app_onboarding_converts_or_drops_at_signup() -> None:
    done = run(
        [
            touch(0, "app.install", "app", "install", device="p1"),
            touch(2 * M, "onboarding.signup", "app", "submit", device="p1"),
            touch(4 * M, "onboarding.profile", "app", "submit", device="p1"),
            touch(6 * M, "onboarding.completed", "app", "view", device="p1"),
        ],
        until=7 * M,
    )
    assert journey_names(done, "converted") == [("app_onboarding", "setup")]
    stuck = run(
        [
            touch(0, "app.install", "app", "install", device="p2"),
            touch(
                2 * M,
                "onboarding.signup",
                "app",
                "submit",
                device="p2",
                outcome="error",
                reason="sms_not_received",
            ),
        ],
        until=2 * H,
    )
    assert journey_names(stuck, "dropped_off") == [("app_onboarding", "signup")]
    mot = named(stuck, "moment_of_truth", "signup")
    assert [dict(o.detail)["passed"] for o in mot] == [False]


NEGATIVE_SCENARIOS = {
    "error": [
        touch(
            0, "checkout.payment", action="submit", device="n", outcome="error", reason="declined"
        )
    ],
    "abandoned": [touch(0, "cart.add", action="add", device="n", outcome="abandoned")],
    "call_abandoned": [
        touch(0, "queue.wait", "call_center", "wait", customer="n", outcome="abandoned")
    ],
    "long_wait": [touch(0, "queue.wait", "call_center", "wait", customer="n", wait_ms=6 * 60_000)],
    "slow_page": [touch(0, "product.view", device="n", duration_ms=8_000)],
    "low_csat": [touch(0, "agent.talk", "call_center", "talk", customer="n", csat=2)],
    "nps_detractor": [touch(0, "survey.nps", "email", "answer", customer="n", nps=5)],
    "negative_sentiment": [touch(0, "chat.message", "chat", "write", customer="n", sentiment=-0.8)],
    "complaint": [touch(0, "support.contact", "email", "complain", customer="n")],
    "transfer": [touch(0, "agent.talk", "call_center", "transfer", customer="n")],
    "repeat_contact": [
        touch(0, "ivr.menu", "call_center", "select", customer="n", session_hint="a"),
        touch(2 * D, "chat.start", "chat", "start", customer="n"),
    ],
    "channel_switch_after_failure": [
        touch(0, "checkout.payment", action="submit", customer="n", outcome="error"),
        touch(10 * M, "ivr.menu", "call_center", "select", customer="n"),
    ],
    "repeated_attempts": [
        touch(i * 20 * S, "checkout.payment", action="submit", customer="n") for i in range(3)
    ],
}


@pytest.mark.parametrize("kind", sorted(NEGATIVE_INTENSITY))
def test_every_negative_moment_kind_is_detected_once(kind: str) -> None:
    out = run(NEGATIVE_SCENARIOS[kind], until=1 * H)
    kinds = [o.name for o in named(out, "negative_moment")]
    assert kinds.count(kind) == 1, kinds


def test_negative_moments_outside_their_window_are_not_reported() -> None:
    late_switch = run(
        [
            touch(0, "checkout.payment", action="submit", customer="w", outcome="error"),
            touch(2 * H, "ivr.menu", "call_center", "select", customer="w"),
        ],
        until=3 * H,
    )
    assert named(late_switch, "negative_moment", "channel_switch_after_failure") == []
    short_wait = run([touch(0, "queue.wait", "call_center", "wait", customer="w", wait_ms=60_000)])
    assert named(short_wait, "negative_moment", "long_wait") == []


def test_a_problem_at_a_moment_of_truth_weighs_more() -> None:
    at_mot = run(
        [touch(0, "checkout.payment", action="submit", device="m1", outcome="error")], until=1
    )
    elsewhere = run([touch(0, "cart.add", action="add", device="m2", outcome="error")], until=1)
    severity_mot = dict(named(at_mot, "negative_moment", "error")[0].detail)["severity"]
    severity_plain = dict(named(elsewhere, "negative_moment", "error")[0].detail)["severity"]
    assert severity_mot > severity_plain == NEGATIVE_INTENSITY["error"]


def test_peak_end_a_journey_that_ends_badly_is_remembered_badly() -> None:
    recovered = run(
        [
            touch(0, "checkout.payment", action="submit", device="k1", outcome="error"),
            touch(1 * M, "checkout.confirmation", device="k1"),
        ],
        until=2 * M,
    )
    ends_badly = run(
        [
            touch(0, "cart.add", action="add", device="k2"),
            touch(1 * M, "checkout.payment", action="submit", device="k2", outcome="error"),
        ]
    )
    good, bad = named(recovered, "score")[0].value, named(ends_badly, "score")[0].value
    assert good == peak_end_score(-0.936, 0.5) == 39.1
    assert bad == peak_end_score(-0.936, -0.936) == 3.2


def test_a_shared_device_stops_merging_customers() -> None:
    touches = [
        touch(i * M, "account.login", "store", "login", customer=f"k{i}", device="kiosk")
        for i in range(5)
    ]
    touches.append(touch(10 * M, "product.view", "store", device="kiosk"))
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    out = [o for t in touches for o in engine.submit(t)]
    out += engine.advance(T0 + 11 * M)
    assert len(named(out, "identity", "identifier_blocked")) == 1
    assert named(out, "identity", "merged") == []
    assert engine.identity.resolve((("device_id", "kiosk"),)).person_id == "a:device_id:kiosk"


def test_duplicates_are_ignored_and_late_events_counted() -> None:
    first = touch(0, "home.view", device="u1", event_id="same")
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=1 * M)
    out = engine.submit(first) + engine.submit(first)
    out += engine.submit(touch(10 * M, "product.view", device="u1"))
    out += engine.submit(touch(1 * M, "cart.add", action="add", device="u1"))  # 9 minutes late
    out += engine.advance(T0 + 11 * M)
    assert engine.counters.duplicates == 1 and engine.counters.late_events == 1
    assert len(named(out, "journey", "started")) == 1


def test_state_survives_a_snapshot_and_restore_exactly() -> None:
    touches = [
        touch(0, "home.view", device="r1"),
        touch(1 * M, "cart.add", action="add", customer="r1", device="r1"),
        touch(2 * M, "ivr.menu", "call_center", "select", customer="r1"),
    ]
    later = [touch(3 * H, "checkout.payment", action="submit", customer="r1")]
    straight = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    expected = [o for t in touches + later for o in straight.submit(t)] + straight.advance(2**62)
    first = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    got = [o for t in touches for o in first.submit(t)]
    snapshot = first.snapshot()
    names = first.state_names
    assert all(
        PersonState.from_bytes(raw, names).to_bytes(names) == raw for raw in snapshot.values()
    )
    second = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    second.identity = first.identity  # the identity graph has its own table
    second.restore(snapshot)
    second.advance(first.watermark)
    got += [o for t in later for o in second.submit(t)] + second.advance(2**62)
    assert got == expected


def test_definition_errors_name_the_file_line_and_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "journeys.yaml"
    path.write_text(
        "version: 1\njourneys:\n  - name: buy\n    stages:\n      - name: cart\n"
        "        match: [{touchpoint: 'cart.*'}]\n        timeout: soon\n"
        "    goal: [{touchpoint: x}]\n"
    )
    with pytest.raises(DefinitionError) as error:
        load_catalog(path)
    message = str(error.value)
    assert f"{path}:7: journeys[buy].stages[cart].timeout: not a duration: 'soon'" in message
    with pytest.raises(DefinitionError, match=r":1: \(yaml\)|:2: \(yaml\)|:3: \(yaml\)"):
        parse_catalog("version: 1\njourneys: [\n  - {", "broken.yaml")
    with pytest.raises(DefinitionError, match="repeated: buy"):
        parse_catalog(
            "version: 1\njourneys:\n"
            + "  - {name: buy, stages: [{name: a, match: [{}], timeout: 1h}], goal: [{}]}\n" * 2
        )


def test_the_default_definitions_cover_the_four_channels() -> None:
    catalog = load_catalog()
    assert {j.name for j in catalog.journeys} >= {
        "online_purchase",
        "browse_online_buy_in_store",
        "support_case",
        "app_onboarding",
    }
    channels = {
        channel
        for j in catalog.journeys
        for s in j.stages
        for p in s.match
        for channel in (p.channel or ())
    } | {c for j in catalog.journeys for p in j.goal for c in (p.channel or ())}
    assert {"web", "app", "store"} <= {c.value for c in channels}
    assert all(j.moments_of_truth for j in catalog.journeys)


def test_an_output_as_json_has_every_field_but_its_key_and_a_stable_id() -> None:
    out = run([touch(0, "home.view", device="d9"), touch(M, "cart.add", device="d9")], until=M)
    started = named(out, "journey", "started")[0]
    data = started.as_dict()
    assert set(data) == (set(started._fields) - {"key"}) | {"output_id"}
    assert data["output_id"] == started.output_id and len(data["output_id"]) == 16
    assert data["detail"] == dict(started.detail)
    assert [data[name] for name in ("type", "name", "at", "journey")] == [
        "journey",
        "started",
        T0,
        "online_purchase",
    ]


def test_an_idle_partition_times_out_on_the_wall_clock_as_if_a_touchpoint_had_arrived() -> None:
    """With the default settings: a deadline between the watermark and the last event time
    when input stops fires once the partition has been idle for the lateness plus the gap;
    a touchpoint arriving afterwards is late only if it took longer than the lateness more
    than the last one did to arrive."""
    settings = Settings()
    lateness = int(settings.allowed_lateness_s * 1000)
    engine = JourneyEngine(
        CATALOG,
        allowed_lateness_ms=lateness,
        idle_after_ms=int(settings.idle_after_s * 1000),
    )
    transit = 100  # event time to arrival, ms
    engine.submit(touch(0, "home.view", device="d9"), T0 + transit)
    engine.submit(touch(1 * M, "cart.add", action="add", device="d9"), T0 + 1 * M + transit)
    deadline = T0 + 1 * M + 2 * H  # the cart stage's time-out
    last = touch(deadline - T0 - 200, "home.view", device="other")
    arrived = last.at + transit
    assert named(engine.submit(last, arrived), "journey", "dropped_off") == []
    gap = deadline - (last.at - lateness)
    assert named(engine.tick(arrived + gap - 1), "journey", "dropped_off") == []
    fired = engine.tick(arrived + gap)
    assert journey_names(fired, "dropped_off") == [("online_purchase", "cart")]
    assert named(fired, "journey", "dropped_off")[0].at == deadline

    wall = arrived + gap + 100
    engine.submit(touch(wall - transit - T0, "home.view", device="d10"), wall)
    assert engine.counters.late_events == 0
    slower = transit + lateness + 1
    engine.submit(touch(wall - slower - T0, "home.view", device="d11"), wall)
    assert engine.counters.late_events == 1
