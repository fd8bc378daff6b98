"""The journey map's figures against the ground truth, and the before/after comparison.

A simulated day runs through the journey engine into ClickHouse; from noon the app's checkout
crashes (an injected pain point at the payment stage, halfway). The map read from ClickHouse
must equal what the engine emitted (computed here in plain Python, without SQL) and what the
simulator meant to happen; comparing the morning with the afternoon must flag the payment
stage and leave the unchanged stages alone. The exported HTML must work offline.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree import ElementTree

import pytest

from pipeline.definitions import load_catalog
from pipeline.engine import Output
from pipeline.experience import GOAL_VALUE, more_intense
from pipeline.journeymap import JourneyMap, compare, holm, two_proportion_p, welch_p
from pipeline.scenario import DaySimulator, Incident
from sinks.clickhouse.journey_map import MapRequestError, load_journey_map
from streams.mapexport import map_bytes
from tests.browser import chromium
from tests.integration.test_live_figures import fill

pytestmark = pytest.mark.integration

DAY = datetime(2026, 11, 9, tzinfo=UTC)
NOON = DAY + timedelta(hours=12)
END = DAY + timedelta(days=3)  # every time-out of the day has come due
JOURNEY = "online_purchase"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture(scope="module")
def day(chdb_dir: Any) -> tuple[Any, str, list[Output], DaySimulator]:
    from sinks.clickhouse.client import connect

    client = connect(f"chdb://{chdb_dir}")
    db = "t_journey_map"
    client.command(f"DROP DATABASE IF EXISTS {db}")
    crash = Incident("app_checkout_crash", ms(NOON), ms(DAY + timedelta(days=1)))
    simulator = DaySimulator(11, ms(DAY), 5000, [crash])
    outputs = fill(client, db, simulator.generate())
    return client, db, outputs, simulator


def load(client: Any, db: str, since: datetime, until: datetime, **filters: Any) -> JourneyMap:
    definition = next(j for j in load_catalog().journeys if j.name == JOURNEY)
    stages = tuple(s.name for s in definition.stages)
    return load_journey_map(client, db, JOURNEY, stages, since, until, **filters)


def truth(outputs: list[Output], since: datetime, until: datetime) -> dict[str, Any]:
    """The map's figures straight from the engine's outputs (no SQL, no rollup): the journeys
    started in the period, with all they did."""
    cohort = {
        o.journey_id
        for o in outputs
        if o.journey == JOURNEY and o.name == "started" and ms(since) <= o.at < ms(until)
    }
    chosen = [o for o in outputs if o.journey == JOURNEY and o.journey_id in cohort]
    entered: dict[str, set[str]] = defaultdict(set)
    outcome: dict[tuple[str, str], set[str]] = defaultdict(set)
    negative: dict[tuple[str, str], float] = {}
    pains: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for o in chosen:
        if o.type not in ("journey", "negative_moment"):
            continue
        assert o.journey_id and o.stage
        if o.type == "journey" and o.name in ("started", "stage_reached"):
            entered[o.stage].add(o.journey_id)
        elif o.type == "journey" and o.name in ("converted", "dropped_off"):
            outcome[(o.stage, o.name)].add(o.journey_id)
        elif o.type == "negative_moment":
            key = (o.journey_id, o.stage)
            negative[key] = min(negative.get(key, 0.0), o.value or 0.0)
            pains[o.stage][o.name].add(o.journey_id)
    emotion = {}
    for stage, journeys in entered.items():
        values = []
        for journey_id in journeys:
            value = negative.get((journey_id, stage), 0.0)
            if journey_id in outcome.get((stage, "converted"), set()):
                value = more_intense(GOAL_VALUE, value)
            values.append(value)
        emotion[stage] = round(sum(values) / len(values), 4)
    return {
        "entered": {stage: len(j) for stage, j in entered.items()},
        "converted": {s: len(j) for (s, name), j in outcome.items() if name == "converted"},
        "dropped_off": {s: len(j) for (s, name), j in outcome.items() if name == "dropped_off"},
        "emotion": emotion,
        "top_pain": {
            stage: sorted(kinds.items(), key=lambda item: (-len(item[1]), item[0]))[0][0]
            for stage, kinds in pains.items()
        },
    }


def figures(journey_map: JourneyMap) -> dict[str, Any]:
    stages = journey_map.stages
    return {
        "entered": {s.stage: s.entered for s in stages if s.entered},
        "converted": {s.stage: s.converted for s in stages if s.converted},
        "dropped_off": {s.stage: s.dropped_off for s in stages if s.dropped_off},
        "emotion": {s.stage: s.emotion for s in stages if s.emotion is not None},
        "top_pain": {s.stage: s.pain_points[0].kind for s in stages if s.pain_points},
    }


def test_the_map_equals_the_ground_truth(day: Any) -> None:
    client, db, outputs, simulator = day
    whole = load(client, db, DAY, END)
    assert figures(whole) == truth(outputs, DAY, END)
    # what the simulator meant: conversions and drop-offs by stage, over the whole day
    meant = Counter((j.outcome, j.stage) for j in simulator.truth.journeys if j.journey == JOURNEY)
    assert {s.stage: s.converted for s in whole.stages if s.converted} == {
        stage: n for (outcome, stage), n in meant.items() if outcome == "converted"
    }
    assert {s.stage: s.dropped_off for s in whole.stages if s.dropped_off} == {
        stage: n for (outcome, stage), n in meant.items() if outcome == "dropped_off"
    }
    assert whole.converted == meant_total(meant, "converted") > 100
    payment = whole.stages[-1]
    assert payment.pain_points[0].kind == "error"
    assert payment.pain_points[0].revenue_at_risk and payment.pain_points[0].revenue_at_risk > 0
    assert payment.moments_of_truth[0].name == "payment"
    assert 0 < (payment.moments_of_truth[0].failure_rate or 0) < 1
    assert whole.peak_stage == len(whole.stages) - 1 == whole.end_stage
    # the flows between stages add up to the entries of the next stage
    into_cart = sum(f.journeys for f in whole.flows if f.to == "cart")
    assert into_cart == whole.stages[2].entered
    # each half alone equals its own truth too
    for since, until in ((DAY, NOON), (NOON, END)):
        assert figures(load(client, db, since, until)) == truth(outputs, since, until)


def meant_total(meant: Counter[tuple[str, str]], outcome: str) -> int:
    return sum(n for (o, _), n in meant.items() if o == outcome)


def test_before_and_after_flags_the_injected_pain_point_and_nothing_unchanged(day: Any) -> None:
    client, db, _, _ = day
    before, after = load(client, db, DAY, NOON), load(client, db, NOON, END)
    changes = {(c.stage, c.figure): c for c in compare(before, after)}
    payment_drop = changes[("payment", "drop-off rate")]
    assert payment_drop.significant and (payment_drop.delta or 0) > 0.1, payment_drop
    errors = changes[("payment", "journeys with error")]
    assert errors.significant and (errors.delta or 0) > 0, errors
    assert changes[("payment", "emotion")].significant
    for stage in ("awareness", "consideration", "cart"):
        unchanged = changes[(stage, "drop-off rate")]
        assert unchanged.p_value is not None and not unchanged.significant, unchanged
    assert not changes[("cart", "journeys entered")].significant  # volumes: not tested


def test_the_statistics_match_textbook_values() -> None:
    # two-proportion z-test: 45/100 vs 60/100 gives z = -2.1232, p = 0.0337
    assert two_proportion_p(45, 100, 60, 100) == pytest.approx(0.0337, abs=1e-4)
    # Welch: means 0 and 0.5, sd 1, n 50 each: t = -2.5, df = 98, p = 0.01409
    assert welch_p(0.0, 1.0, 50, 0.5, 1.0, 50) == pytest.approx(0.01409, abs=1e-4)
    assert two_proportion_p(1, 5, 4, 5) is None  # too few journeys to test
    assert holm([0.01, 0.04, None, 0.03]) == [0.03, 0.06, None, 0.06]


def test_filters_by_channel_and_segment(day: Any) -> None:
    client, db, outputs, _ = day
    app = load(client, db, DAY, END, channel="app")
    app_journeys = {
        o.journey_id
        for o in outputs
        if o.journey == JOURNEY and o.channel == "app" and o.type == "journey"
    }
    started = {o.journey_id for o in outputs if o.journey == JOURNEY and o.name == "started"}
    assert app.started == len(app_journeys & started) > 0
    anonymous = load(client, db, DAY, END, segment="anonymous")
    identified = load(client, db, DAY, END, segment="identified")
    assert anonymous.converted == 0 < identified.converted  # buying needs a customer id
    with pytest.raises(MapRequestError, match="segment"):
        load(client, db, DAY, END, segment="vip")
    with pytest.raises(MapRequestError, match="channel"):
        load(client, db, DAY, END, channel="web'; DROP TABLE x")


def test_the_exported_files_work_offline_and_show_the_figures(day: Any, tmp_path: Any) -> None:
    client, db, _, _ = day
    before, after = load(client, db, DAY, NOON), load(client, db, NOON, END)
    html = tmp_path / "map.html"
    html.write_bytes(map_bytes(after, before, ".html"))
    text = html.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<script" not in text
    with chromium(offline=True) as browser:
        page = browser.page
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(html.as_uri())
        payment = after.stages[-1]
        shown = page.locator('[data-figure="stage.payment.summary"]').last.text_content()
        assert f"{payment.entered:,} entered" in (shown or "")
        emotion = page.locator('[data-figure="emotion.payment"]').last.text_content() or ""
        assert emotion.startswith(f"{payment.emotion:+.2f}")
        flagged = page.locator('[data-change="payment|drop-off rate"]')
        assert flagged.get_attribute("data-significant") == "true"
        unchanged = page.locator('[data-change="cart|drop-off rate"]')
        assert unchanged.get_attribute("data-significant") == "false"
        fonts = page.evaluate("document.fonts.check('12px \"DejaVu Sans\"')")
        assert fonts is True
        browser.screenshot("journey-map-export.png")
        assert browser.errors == []
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
    svg = map_bytes(after, None, ".svg")
    root = ElementTree.fromstring(svg)  # noqa: S314 - our own output
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    png = map_bytes(after, before, ".png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    width, height = struct.unpack(">II", png[16:24])
    assert width > 2000 and height > 1000  # drawn at twice the SVG's size, for slides
