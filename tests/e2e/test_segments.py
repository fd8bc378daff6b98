"""Segments end to end (docs/segments.md): a journeys file naming two segments; customers'
events through the collector into two workers on the embedded broker and the sink with
ClickHouse (chdb). Each journey is in the segment of the touchpoint that started it, whatever
order the events are posted in and across the workers' hand-offs; the live API and page (headless
Chromium), the journey map (API and `journeywatch map`), the workers' per-segment metrics and
the ClickHouse column all give the segment's own figures, and an unknown segment is refused
naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker
from tests.browser import chromium, sign_in
from tests.e2e.stack import Topology, clock_events, day_start
from tests.helpers import (
    WEB_READ_TOKEN,
    http_get,
    http_json,
    metric_values,
    query_chdb,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.e2e

S = 1_000
M = 60 * S
H = 60 * M

SEGMENTS = """
segments:
  - name: gold
    description: gold and platinum loyalty tiers
    match: {attributes: {tier: [gold, platinum]}}
  - name: eu_stores
    match: {channel: [store], attributes: {region: EU}}
"""


def event(at: int, touchpoint: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.fromtimestamp(at / 1000, UTC).isoformat(),
        "channel": fields.pop("channel", "web"),
        "touchpoint": touchpoint,
        "action": fields.pop("action", "view"),
        "source": "test",
        **fields,
    }


def iso(at: int) -> str:
    return datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def stream(start: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """The events, in the order they are posted, and each segment's expected figures."""
    events: list[dict[str, Any]] = []
    for n in range(12):  # gold: 4 pay, 8 stop at the payment
        at, who = start + n * 10 * S, {"customer_id": f"gold-{n}", "attributes": {"tier": "gold"}}
        events += [
            event(at, "cart.add", action="add", **who),
            event(at + M, "checkout.payment", action="submit", **who),
        ]
        if n < 4:
            events.append(event(at + 2 * M, "checkout.confirmation", **who))
    for n in range(10):  # silver: all pay (in no segment: "other")
        at = start + n * 10 * S
        who = {"customer_id": f"silver-{n}", "attributes": {"tier": "silver"}}
        events += [
            event(at, "cart.add", action="add", **who),
            event(at + M, "checkout.payment", action="submit", **who),
            event(at + 2 * M, "checkout.confirmation", **who),
        ]
    # Posted latest first: the journey's first touchpoint by event time (platinum) decides,
    # not the first to arrive (tier silver by then).
    late = {"customer_id": "platinum-0"}
    events += [
        event(
            start + 3 * M,
            "checkout.payment",
            action="submit",
            **late,
            attributes={"tier": "silver"},
        ),
        event(start + 2 * M, "cart.add", action="add", **late, attributes={"tier": "platinum"}),
    ]
    # Anonymous first, gold only at the login: the journey began in no segment and stays there.
    events += [
        event(start + M, "cart.add", action="add", device_id="anon-device"),
        event(
            start + 2 * M,
            "checkout.payment",
            action="submit",
            device_id="anon-device",
            customer_id="gold-later",
            attributes={"tier": "gold"},
        ),
    ]
    for n in range(3):  # EU stores: 2 buy at the till, 1 leaves
        at = start + n * 20 * S
        who = {"customer_id": f"eu-{n}", "channel": "store", "attributes": {"region": "EU"}}
        events.append(event(at, "store.visit", action="visit", **who))
        if n < 2:
            events.append(event(at + 10 * M, "till.purchase", action="purchase", **who))
    expected = {
        "gold": {"started": 13, "converted": 4, "dropped_off": 9},
        "other": {"started": 11, "converted": 10, "dropped_off": 1},
        "eu_stores": {"started": 3, "converted": 2, "dropped_off": 1},
    }
    return events, expected


def figures(body: dict[str, Any]) -> dict[str, int]:
    """Started, converted and dropped off over every journey of a live snapshot."""
    return {k: sum(j[k] for j in body["journeys"]) for k in ("started", "converted", "dropped_off")}


def test_segments_filter_the_live_page_the_journey_map_and_the_metrics(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    start = day_start()
    journeys = tmp_path / "journeys.yaml"
    defaults = resources.files("pipeline").joinpath("defaults/journeys.yaml").read_text()
    journeys.write_text(defaults + SEGMENTS)
    events, expected = stream(start)
    topology = Topology(
        broker,
        tmp_path,
        journeys_file=journeys,
        allowed_lateness_s=600,
        idle_after_s=30 * 86_400,  # outputs from event time only
        live_window_minutes=6 * 60,
        live_baseline_minutes=60,
    )
    base = f"http://127.0.0.1:{topology.status_port}"
    try:
        topology.start_all()
        topology.start(1)
        wait_until(topology.balanced, 120, "both workers ready with two partitions each", 0.5)
        assert topology.post(events) == 202
        wait_until(topology.drained, 120, "every touchpoint processed", 0.5)
        assert topology.post(clock_events(start + 5 * H)) == 202  # every deadline passes

        def decided() -> bool:
            by_name = topology.stats().get("journey_events_by_name", {})
            outcomes = {n: sum(e[n] for e in expected.values()) for n in expected["gold"]}
            return all(int(by_name.get(n, 0)) >= count for n, count in outcomes.items())

        wait_until(decided, 120, "every journey's outcome in ClickHouse", 0.5)
        wait_until(topology.drained, 120, "the clock events processed", 0.5)
        assert topology.stats().get("journey_errors", 0) == 0

        # the live API, per segment (the segment's journeys only), and all of them
        def live(segment: str | None = None) -> dict[str, Any]:
            query = f"?segment={segment}" if segment else ""
            body = http_json(f"{base}/api/v1/live{query}")
            assert body is not None
            return dict(body)

        def settled() -> dict[str, Any] | None:
            body = live()
            return body if figures(body)["dropped_off"] == 11 else None

        everything = wait_until(settled, 60, "the live figures of every journey")
        assert figures(everything) == {"started": 27, "converted": 16, "dropped_off": 11}
        assert everything["segment"] is None and everything["segments"] == ["gold", "eu_stores"]
        for segment, wanted in expected.items():
            body = live(segment)
            assert body["segment"] == segment
            assert figures(body) == wanted, segment
        gold = live("gold")
        payment = next(
            s
            for j in gold["journeys"]
            if j["journey"] == "online_purchase"
            for s in j["stages"]
            if s["stage"] == "payment"
        )
        assert payment["dropped_off"] == 9 and payment["drop_off_rate"] == round(9 / 13, 4)
        status, refused = http_get(f"{base}/api/v1/live?segment=platinum")
        assert status == 400
        assert b"segment: 'platinum' is not one of gold, eu_stores, other" in refused
        assert http_get(f"{base}/api/v1/live/stream?segment=platinum")[0] == 400

        # the page: the segment chosen in its header, the figures its journeys', by push
        with chromium() as browser:
            page = browser.page
            sign_in(page, base, WEB_READ_TOKEN)
            page.goto(f"{base}/?segment=gold")

            def started_on_page() -> int | None:
                return browser.figures().get("totals.started")

            wait_until(lambda: started_on_page() == 13, 20, "the gold segment's page")
            browser.screenshot("live-page-segment-gold.png")
            assert page.input_value("#segment") == "gold"
            assert page.get_attribute("[data-segment]", "data-segment") == "gold"
            journey_link = page.get_attribute('[data-map="online_purchase"]', "href") or ""
            assert "segment=gold" in journey_link  # its map, of the same segment
            page.select_option("#segment", "eu_stores")
            page.wait_for_url(f"{base}/?segment=eu_stores")
            wait_until(lambda: started_on_page() == 3, 20, "the EU stores' page")
            page.select_option("#segment", "")
            page.wait_for_url(lambda url: "segment=" not in url)
            wait_until(lambda: started_on_page() == 27, 20, "every journey again")
            assert not browser.errors, browser.errors
            # a segment the file does not name: the page says why, instead of reconnecting
            page.goto(f"{base}/?segment=platinum")
            wait_until(
                lambda: "'platinum' is not one of" in (page.text_content("#connection") or ""),
                20,
                "the page to say the segment is refused",
            )
            assert page.get_attribute("#connection", "data-state") == "refused"

        # the journey map: the journeys of the segment that started in the period
        period = f"since={iso(start - M)}&until={iso(start + H)}"
        for segment, journey in (
            ("gold", "online_purchase"),
            ("other", "online_purchase"),
            ("eu_stores", "browse_online_buy_in_store"),
        ):
            drawn = http_json(f"{base}/api/v1/map/{journey}?{period}&segment={segment}")
            assert drawn is not None, segment
            got = {k: drawn["map"][k] for k in ("started", "converted", "dropped_off")}
            assert got == expected[segment], segment
            assert drawn["map"]["segment"] == segment
        assert (http_json(f"{base}/api/v1/map/online_purchase?{period}&segment=identified"))["map"][
            "started"
        ] == 24  # the built-in filter still works: every journey but the anonymous
        status, refused = http_get(f"{base}/api/v1/map/online_purchase?{period}&segment=silver")
        assert status == 400 and b"segment: 'silver' is not one of" in refused
        out = tmp_path / "gold.svg"
        made = run_cli(
            [
                "map",
                "--journey",
                "online_purchase",
                "--since",
                iso(start - M),
                "--until",
                iso(start + H),
                "--segment",
                "gold",
                "--out",
                str(out),
                "--api",
                base,
            ],
            topology.env,
        )
        assert made.returncode == 0, made.stderr
        assert "13 journeys started" in made.stdout and out.read_bytes().startswith(b"<")

        # the workers' metrics: journey x stage x segment, summed over both workers
        def sample(name: str, **labels: str) -> float:
            total = 0.0
            for index in topology.workers:
                _, text = http_get(f"http://127.0.0.1:{topology.port + index}/metrics")
                for key, value in metric_values(text.decode(), name).items():
                    if labels.items() <= dict(key).items():
                        total += value
            return total

        at_payment = {"journey": "online_purchase", "stage": "payment"}
        assert sample("jw_segment_journeys_dropped_off_total", **at_payment, segment="gold") == 9
        assert sample("jw_segment_journeys_dropped_off_total", **at_payment, segment="other") == 1
        assert sample("jw_segment_stage_entered_total", stage="cart", segment="gold") == 13
        assert sample("jw_segment_journeys_converted_total", segment="eu_stores") == 2
        segments = {
            dict(key)["segment"]
            for index in topology.workers
            for key in metric_values(
                http_get(f"http://127.0.0.1:{topology.port + index}/metrics")[1].decode(),
                "jw_segment_stage_entered_total",
            )
        }
        assert segments == {"gold", "eu_stores", "other"}  # bounded: never a raw tier
    finally:
        topology.stop()
    rows = query_chdb(
        topology.chdb,
        "SELECT segment, uniqExact(journey_id) FROM journeywatch.journey_events "
        "WHERE type = 'journey' AND name = 'started' GROUP BY segment ORDER BY segment",
    )
    assert {r[0]: int(r[1]) for r in rows} == {k: v["started"] for k, v in expected.items()}
