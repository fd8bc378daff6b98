"""The first five minutes of `make run` on a fresh data directory (issue 26): the demo backfills
its history, walks every journey, its scheduled payment outage drops customers off at the
payment stage, the local Prometheus fires `JourneyDropOffSpike`, the live page shows it (headless
Chromium, a screenshot in test-artifacts/), every journey has a baseline, the journey map's
before/after flags the payment stage, `journeywatch simulate incident` starts one by hand, and
every analyst-guide query answers through `journeywatch sql`."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium, sign_in
from tests.e2e.test_run import RunPorts, journeywatch_run
from tests.e2e.test_topology import guide_query, guide_query_names
from tests.helpers import WEB_READ_TOKEN, http_json, run_cli, wait_until

pytestmark = pytest.mark.e2e

ALERT_WITHIN_S = 300  # the promise; measured well under two minutes from the start


def test_make_run_tells_the_story_in_minutes(tmp_path: Path) -> None:
    ports = RunPorts()
    env = ports.env(tmp_path)
    base = f"http://127.0.0.1:{ports.status}"
    output = tmp_path / "run.out"
    started = time.monotonic()

    def said() -> str:
        return output.read_text()

    def live() -> dict[str, Any]:
        return http_json(f"{base}/api/v1/live") or {}

    def spike() -> dict[str, Any] | None:
        return next(
            (
                alert
                for alert in live().get("alerts") or []
                if alert["name"] == "JourneyDropOffSpike"
                and (alert["journey"], alert["stage"]) == ("online_purchase", "payment")
            ),
            None,
        )

    with journeywatch_run(env, output) as run:

        def running() -> bool:
            assert run.poll() is None, said()
            return "Press Ctrl-C to stop." in said()

        wait_until(running, 180, "the banner")
        banner = said()
        assert re.search(r"Demo: [\d,]+ touchpoints of the last 2 hours in ClickHouse", banner)
        assert "Incident      payment_outage at " in banner and "Look at       " in banner
        assert "journeywatch simulate incident payment_outage" in banner
        assert f"before/after: {base}/map/online_purchase?since=" in banner

        def spiking() -> dict[str, Any] | None:
            assert run.poll() is None, said()
            return spike()

        alert = wait_until(
            spiking,
            ALERT_WITHIN_S - (time.monotonic() - started),
            "JourneyDropOffSpike for online_purchase / payment on the live page",
            1.0,
        )
        alert_after_s = time.monotonic() - started
        print(f"JourneyDropOffSpike on the live page {alert_after_s:.0f} s after the start")
        assert alert["severity"] == "page" and alert["channel"] in ("web", "app")
        assert "normally" in alert["summary"]

        body = live()
        assert body["alerts_status"] == "ok"
        journeys = {j["journey"]: j for j in body["journeys"]}
        assert set(journeys) == {
            "online_purchase",
            "browse_online_buy_in_store",
            "support_case",
            "app_onboarding",
        }
        # a baseline for every journey (the backfilled history), drop-offs now
        assert all(j["baseline_drop_off_rate"] is not None for j in journeys.values()), journeys
        assert journeys["online_purchase"]["dropped_off"] > 0
        payment = next(s for s in journeys["online_purchase"]["stages"] if s["stage"] == "payment")
        assert payment["dropped_off"] > 0
        # every journey and stage walked, on all four channels
        for journey in journeys.values():
            for stage in journey["stages"]:
                assert stage["entered"] > 0, (journey["journey"], stage)
        channels = {t["channel"] for t in body["traffic"] if t["touchpoints"] > 0}
        assert {"web", "app", "call_center", "store"} <= channels, channels

        # the live page, as a person sees it; the alert leads to its runbook and to the
        # journey map with its stage selected
        with chromium() as browser:
            page = browser.page
            sign_in(page, base, WEB_READ_TOKEN)
            box = page.locator('[data-alert="JourneyDropOffSpike"]').first
            box.wait_for(timeout=30_000)
            browser.screenshot("demo-live-page.png")
            runbook = box.locator("a[data-runbook]").get_attribute("href")
            assert runbook == "/runbooks/journey-drop-off-spike"
            box.locator("a", has_text="journey map").click()
            page.wait_for_url(re.compile(r"/map/online_purchase\?.*stage=payment"))
            selected = page.locator('tr[data-selected="payment"]').first
            selected.wait_for(timeout=30_000)
            assert "payment" in selected.inner_text()
            browser.screenshot("demo-journey-map.png")
            page.goto(base + runbook)
            assert "JourneyDropOffSpike" in page.inner_text("h1"), page.inner_text("h1")
            assert not browser.errors, browser.errors

        # the journey map before/after, from the link the run printed
        link = re.search(r"the map before/after: (\S+)", said())
        assert link, said()
        query = urllib.parse.urlsplit(link[1]).query
        wait_until(
            lambda: _payment_flagged(base, query), 60, "the map's payment drop-off flagged", 2.0
        )

        # an incident by hand
        by_hand = run_cli(
            ["simulate", "incident", "store_stockout", "--seconds", "5"], env, timeout=30
        )
        assert by_hand.returncode == 0, by_hand.stderr
        wait_until(
            lambda: "incident store_stockout (started by hand)" in said(), 10, "the run to say so"
        )

        # every analyst-guide query answers through `journeywatch sql`
        empty = []
        for name in sorted(guide_query_names()):
            answer = run_cli(["sql", "--format", "json", guide_query(name)], env)
            assert answer.returncode == 0, (name, answer.stderr)
            if not json.loads(answer.stdout)["rows"]:
                empty.append(name)
        assert not empty, f"no rows: {empty}"

        print(f"the whole story checked {time.monotonic() - started:.0f} s after the start")
        run.send_signal(signal.SIGINT)
        assert run.wait(90) == 0
    # with the run stopped, nothing takes the request: the command says so
    assert run_cli(["simulate", "incident", "payment_outage"], env, timeout=30).returncode != 0


def _payment_flagged(base: str, query: str) -> bool:
    body = http_json(f"{base}/api/v1/map/online_purchase?{query}")
    if not body or not body.get("changes"):
        return False
    return any(
        c["stage"] == "payment"
        and c["figure"] == "drop-off rate"
        and c["significant"]
        and (c["delta"] or 0) > 0
        for c in body["changes"]
    )
