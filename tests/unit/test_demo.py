"""The demo of `journeywatch run` (pipeline/demo.py): its journeys file, its traffic, its
incidents."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest

from pipeline.definitions import load_catalog, parse_catalog
from pipeline.demo import (
    MAX_GAP_MS,
    STAGE_TIMEOUT_MS,
    DemoTraffic,
    demo_journeys,
)

NOW = 1_800_000_000_000


def _ms(event: dict[str, object]) -> int:
    return int(datetime.fromisoformat(str(event["occurred_at"])).timestamp() * 1000)


def test_the_demo_journeys_are_the_shipped_ones_with_short_times() -> None:
    shipped = load_catalog()
    demo = parse_catalog(demo_journeys(), "demo")
    assert [j.name for j in demo.journeys] == [j.name for j in shipped.journeys]
    for old, new in zip(shipped.journeys, demo.journeys, strict=True):
        assert [s.name for s in new.stages] == [s.name for s in old.stages]
        assert new.goal == old.goal and new.moments_of_truth == old.moments_of_truth
        for stage in new.stages:
            assert STAGE_TIMEOUT_MS[0] <= stage.timeout <= STAGE_TIMEOUT_MS[1]
            assert stage.timeout > MAX_GAP_MS  # a persona's pause never ends its stage


def test_backfill_then_live_traffic_walks_every_channel_in_time_order() -> None:
    traffic = DemoTraffic(seed=3)
    history = traffic.backfill(NOW)
    times = [_ms(e) for e in history]
    assert times == sorted(times) and times[-1] <= NOW and times[0] >= NOW - 2 * 3_600_000
    assert 10_000 < len(history) < 30_000
    live = [e for second in range(1, 31) for e in traffic.advance(NOW + second * 1000)]
    assert all(NOW < _ms(e) <= NOW + 30_000 for e in live)
    assert 60 * 30 < len(live) < 120 * 30  # about 80 a second
    channels = Counter(e["channel"] for e in live)
    assert {"web", "app", "call_center", "store"} <= set(channels)
    touchpoints = {e["touchpoint"] for e in live}
    # a touchpoint of every stage of every default journey
    assert {
        "home.view",
        "product.view",
        "cart.add",
        "checkout.payment",
        "store_locator.search",
        "store.visit",
        "ivr.menu",
        "queue.wait",
        "app.install",
        "onboarding.signup",
        "onboarding.profile",
    } <= touchpoints
    assert len({e["event_id"] for e in history + live}) == len(history) + len(live)


def test_an_incident_hits_the_personas_arriving_while_it_lasts() -> None:
    traffic = DemoTraffic(seed=5)
    traffic.backfill(NOW, hours=0.1)
    traffic.start_incident("payment_outage", NOW, 20_000)
    during = [e for s in range(1, 41) for e in traffic.advance(NOW + s * 1000)]
    failed = [e for e in during if e.get("outcome_reason") == "provider_unavailable"]
    assert {e["touchpoint"] for e in failed} == {"checkout.payment"}
    assert len(failed) > 50
    assert all(_ms(e) < NOW + 20_000 + MAX_GAP_MS * 6 for e in failed)
    later = [e for s in range(60, 120) for e in traffic.advance(NOW + s * 1000)]
    assert not [e for e in later if e.get("outcome_reason") == "provider_unavailable"]
    with pytest.raises(ValueError, match="unknown incident"):
        traffic.start_incident("meteor", NOW)
