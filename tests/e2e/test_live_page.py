"""The live page in headless Chromium, against two workers and the sink on a real broker, with a
real Alertmanager: its figures equal what ClickHouse holds, it updates by server push as events
arrive, it shows the alerts firing, and the console stays clean."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.broker import EmbeddedBroker
from streams.monitoring import USERNAME, basic_auth_header, binaries, http_call, web_config
from streams.offsets import group_lag
from streams.topics import EXPERIENCE_MOMENTS, JOURNEY_EVENTS
from tests.browser import chromium, sign_in
from tests.conftest import ARTIFACTS
from tests.e2e.stack import Topology, day_start, produce_day
from tests.helpers import (
    WEB_READ_TOKEN,
    free_port,
    http_get,
    http_json,
    run_cli,
    stop_process,
    wait_until,
)
from tests.live_figures import (
    HOUR,
    comparable,
    event_ms,
    morning,
    raw_figures_of_chdb,
    snapshot_figures,
    traffic_of,
)

pytestmark = pytest.mark.e2e

WINDOW, BASELINE = 30, 60


ALERTMANAGER_PASSWORD = "live-page-test-password"
AUTHORIZATION = basic_auth_header(USERNAME, ALERTMANAGER_PASSWORD)


def start_alertmanager(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """Alertmanager as the product runs it: basic auth required (web config)."""
    found = binaries()
    assert found, "Alertmanager is installed by `make test` (apt-get prometheus-alertmanager)"
    directory.mkdir(parents=True, exist_ok=True)
    config = {"route": {"receiver": "local"}, "receivers": [{"name": "local"}]}
    (directory / "alertmanager.yml").write_text(yaml.safe_dump(config))
    (directory / "web.yml").write_text(yaml.safe_dump(web_config(USERNAME, ALERTMANAGER_PASSWORD)))
    process = subprocess.Popen(
        [
            found[1],
            f"--config.file={directory / 'alertmanager.yml'}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={directory / 'web.yml'}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    wait_until(
        lambda: (
            http_call(f"http://127.0.0.1:{port}/-/ready", authorization=AUTHORIZATION)[0] == 200
        ),
        30,
        "alertmanager",
    )
    return process


def fire(alertmanager: str, alert: dict[str, Any]) -> None:
    """POST ``alert`` to Alertmanager with the credentials (anonymous posts get 401)."""
    url = f"{alertmanager}/api/v2/alerts"
    assert http_call(url, [alert], authorization=AUTHORIZATION)[0] == 200


def test_the_live_page_shows_clickhouse_updates_by_push_and_lists_alerts(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    start = day_start()
    events = morning(start)
    cut = next(n for n, e in enumerate(events) if event_ms(e) - start >= 11 * HOUR + HOUR // 2)
    alertmanager_port = free_port()
    alertmanager = start_alertmanager(tmp_path / "alertmanager", alertmanager_port)
    alertmanager_url = f"http://127.0.0.1:{alertmanager_port}"
    topology = Topology(
        broker,
        tmp_path,
        allowed_lateness_s=60,
        idle_after_s=30 * 86_400,  # outputs come from event time only: the figures settle
        live_window_minutes=WINDOW,
        live_baseline_minutes=BASELINE,
        live_refresh_s=1.0,
        alertmanager_url=alertmanager_url,
        alertmanager_password=ALERTMANAGER_PASSWORD,
        grafana_url="http://grafana.example.invalid:3000",
    )
    base = f"http://127.0.0.1:{topology.status_port}"
    try:
        topology.start(0)
        topology.start(1)
        topology.start_sink()
        wait_until(topology.balanced, 120, "both workers ready with two partitions each")
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "the sink")
        produce_day(broker.url, events[:cut], speed=600)
        wait_until(
            lambda: topology.stats().get("touchpoints") == cut, 120, "first half in ClickHouse"
        )
        with chromium() as browser:
            page = browser.page
            sign_in(page, base, WEB_READ_TOKEN)  # the context's other pages share the cookie
            first = traffic_of(events[:cut], WINDOW)

            def page_traffic() -> dict[str, Any]:
                return {k: v for k, v in browser.figures().items() if k.startswith("traffic.")}

            wait_until(lambda: page_traffic() == first, 20, f"the page's traffic {first}")
            assert page.get_attribute("#connection", "data-state") == "live"
            page.evaluate("window.__sameDocument = true")
            # the live journey map, in a second tab, with nothing but loopback reachable
            map_page = page.context.new_page()
            map_page.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if route.request.url.startswith("http://127.0.0.1")
                    else route.abort()
                ),
            )
            map_errors: list[str] = []
            map_page.on(
                "console", lambda m: map_errors.append(m.text) if m.type == "error" else None
            )
            map_page.on("pageerror", lambda e: map_errors.append(str(e)))
            map_page.goto(f"{base}/map/online_purchase?since=1h")
            map_page.locator('[data-figure="stage.payment.summary"]').wait_for(timeout=20_000)
            loads_before = int(map_page.evaluate("document.body.dataset.loads"))
            summary = '[data-figure="stage.payment.summary"]'
            summary_before = map_page.text_content(summary)

            # new events arrive: the open page follows by server push, without a reload
            produce_day(broker.url, events[cut:], speed=600)
            wait_until(
                lambda: topology.stats().get("touchpoints") == len(events),
                120,
                "second half in ClickHouse",
                interval=0.05,
            )
            stored = time.monotonic()
            second = traffic_of(events, WINDOW)
            wait_until(
                lambda: page_traffic() == second, 20, f"the page's traffic {second}", interval=0.05
            )
            push_latency = time.monotonic() - stored

            # the map redraws by itself when new figures arrive, also when they all arrive
            # within its 5 s between redraws: it ends showing what the API answers now
            def map_summary_now() -> str:
                return str(
                    map_page.evaluate(
                        """async (selector) => {
                          const r = await fetch("/api/v1/map/online_purchase?since=1h&format=html");
                          const html = new DOMParser().parseFromString(await r.text(), "text/html");
                          return html.querySelector(selector).textContent;
                        }""",
                        summary,
                    )
                )

            wait_until(
                lambda: (
                    int(map_page.evaluate("document.body.dataset.loads")) > loads_before
                    and map_page.text_content(summary) == map_summary_now()
                ),
                30,
                "the live map to redraw with the new figures",
            )
            assert map_page.text_content(summary) != summary_before
            print(f"live page followed ClickHouse {push_latency:.2f} s after the rows were stored")
            assert push_latency < 2.0, f"the page followed ClickHouse after {push_latency:.2f} s"
            assert page.evaluate("window.__sameDocument") is True
            as_of = max(event_ms(e) for e in events) // 60_000 * 60_000
            assert page.text_content("#window") and "UTC" in (page.text_content("#window") or "")

            # an alert firing in Alertmanager shows, with its segment and runbook
            fire(
                alertmanager_url,
                {
                    "labels": {
                        "alertname": "JourneyDropOffSpike",
                        "severity": "page",
                        "journey": "online_purchase",
                        "stage": "payment",
                        "channel": "web",
                    },
                    "annotations": {
                        "summary": "Drop-off at payment is 42% (baseline 3%)",
                        "runbook_url": "https://example.invalid/runbooks/journey-drop-off-spike",
                        "dashboard": "/d/jw-oncall?var-journey=online_purchase&var-stage=payment",
                    },
                    "startsAt": datetime.now(UTC).isoformat(),
                    "endsAt": (datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
                },
            )
            alert = page.locator('[data-alert="JourneyDropOffSpike"]')
            alert.wait_for(timeout=10_000)
            text = alert.inner_text()
            assert "online purchase · payment · web" in text and "42%" in text
            assert alert.locator("a", has_text="runbook").count() == 1
            assert alert.locator("a", has_text="dashboard").get_attribute("href") == (
                "http://grafana.example.invalid:3000/d/jw-oncall?var-journey=online_purchase"
                "&var-stage=payment"
            )

            # every output stored: the page's figures settle on ClickHouse's final state
            wait_until(topology.drained, 120, "the workers to process everything")
            wait_until(
                lambda: (
                    group_lag(broker.url, "journeywatch-sink", [JOURNEY_EVENTS, EXPERIENCE_MOMENTS])
                    == 0
                ),
                60,
                "the sink to store every output",
            )
            all_stored = datetime.now(UTC).isoformat().replace("+00:00", "Z")

            def settled() -> bool:
                latest = http_json(f"{base}/api/v1/live")
                return bool(
                    latest["computed_at"] > all_stored
                    and browser.figures() == snapshot_figures(latest)
                )

            wait_until(settled, 30, "the page to show the final figures")
            shown = browser.figures()
            browser.screenshot("live-page.png")
            page.set_viewport_size({"width": 1920, "height": 1080})
            browser.screenshot("live-page-wall.png", full_page=False)
            assert browser.errors == []

            # the map of the last hour, compared with the hour before, drawn live
            map_page.goto(f"{base}/map/online_purchase?since=1h&compare_since=2h&compare_until=1h")
            map_page.locator("[data-change]").first.wait_for(timeout=20_000)
            entered = map_page.locator('[data-figure="stage.awareness.summary"]').last
            assert "entered" in (entered.text_content() or "")
            map_page.screenshot(path=str(ARTIFACTS / "journey-map-live.png"), full_page=True)
            bad = map_page.request.get(f"{base}/api/v1/map/online_purchase?segment=vip")
            assert bad.status == 400 and "segment" in bad.json()["error"]
            assert map_errors == []

        # journeywatch map, through the running sink's API
        exported = tmp_path / "map.html"
        result = run_cli(
            [
                "map",
                "--journey",
                "online_purchase",
                "--since",
                "1h",
                "--compare",
                "2h..1h",
                "--api",
                base,
                "--out",
                str(exported),
            ],
            topology.env,
        )
        assert result.returncode == 0, result.stderr
        assert 'data-change="payment|drop-off rate"' in exported.read_text()
        stop_process(topology.sink)  # type: ignore[arg-type]
        topology.sink = None
        truth = raw_figures_of_chdb(
            topology.chdb,
            "journeywatch",
            datetime.fromtimestamp(as_of / 1000, UTC).replace(tzinfo=None),
            WINDOW,
            BASELINE,
        )
        assert truth["totals.dropped_off"] > 0 and truth["totals.negative_moments"] > 0
        assert truth["totals.at_risk"] > 0
        assert comparable(shown, truth) == truth

        # journeywatch map, opening ClickHouse itself now that the sink is gone
        png = tmp_path / "map.png"
        result = run_cli(
            ["map", "--journey", "online_purchase", "--since", "2h", "--out", str(png)],
            topology.env,
        )
        assert result.returncode == 0, result.stderr
        assert "wrote" in result.stdout and png.read_bytes()[:4] == b"\x89PNG"
    finally:
        topology.stop()
        alertmanager.terminate()
        alertmanager.wait(10)


def test_alert_links_are_links_only_when_they_are_http(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Whoever writes an alert writes its annotations: a ``javascript:`` runbook renders as
    text, an https one as a link. The sink reads the product's own Alertmanager (basic auth,
    the password from a file as a mounted secret would give it)."""
    alertmanager_port = free_port()
    alertmanager = start_alertmanager(tmp_path / "alertmanager", alertmanager_port)
    alertmanager_url = f"http://127.0.0.1:{alertmanager_port}"
    password_file = tmp_path / "alertmanager.password"
    password_file.write_text(ALERTMANAGER_PASSWORD + "\n")
    topology = Topology(
        broker,
        tmp_path,
        live_refresh_s=0.5,
        alertmanager_url=alertmanager_url,
        alertmanager_password_file=password_file,
    )
    base = f"http://127.0.0.1:{topology.status_port}"
    try:
        for name, runbook in (
            ("ScriptRunbook", "javascript:alert(3)"),
            ("HttpsRunbook", "https://runbooks.example.invalid/https-runbook"),
        ):
            fire(
                alertmanager_url,
                {
                    "labels": {"alertname": name, "severity": "warning"},
                    "annotations": {
                        "summary": f"{name} summary",
                        "runbook_url": runbook,
                        "dashboard_url": "data:text/html,<script>alert(4)</script>",
                    },
                    "startsAt": datetime.now(UTC).isoformat(),
                    "endsAt": (datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
                },
            )
        topology.start_sink()
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "the sink")

        def with_alerts() -> dict[str, Any] | None:
            doc = http_json(f"{base}/api/v1/live")
            return doc if doc and doc.get("alerts") else None

        live = wait_until(with_alerts, 30, "the sink to read the alerts with its credentials")
        by_name = {a["name"]: a for a in live["alerts"]}
        assert by_name["ScriptRunbook"]["runbook_url"] is None
        assert by_name["ScriptRunbook"]["runbook_text"] == "javascript:alert(3)"
        assert by_name["HttpsRunbook"]["dashboard_url"] is None
        with chromium() as browser:
            page = browser.page
            dialogs: list[str] = []

            def on_dialog(dialog: Any) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            sign_in(page, base, WEB_READ_TOKEN)
            script = page.locator('[data-alert="ScriptRunbook"]')
            script.wait_for(timeout=10_000)
            https = page.locator('[data-alert="HttpsRunbook"]')
            https.wait_for(timeout=10_000)
            # the javascript: runbook is text, and clicking it runs nothing
            assert script.locator("a").count() == 0
            assert "runbook: javascript:alert(3)" in script.inner_text()
            script.get_by_text("runbook: javascript:alert(3)").click()
            # the https runbook is a link; the data: dashboard is text in both
            assert https.locator("a", has_text="runbook").get_attribute("href") == (
                "https://runbooks.example.invalid/https-runbook"
            )
            assert https.locator("a", has_text="dashboard").count() == 0
            assert (
                page.eval_on_selector_all(
                    "#alerts a[href]",
                    "links => links.filter(a => !/^https?:$/.test(new URL(a.href).protocol))"
                    ".length",
                )
                == 0
            )
            # the page checks by itself too, whatever the server sends
            checked = page.evaluate(
                "['javascript:alert(3)', ' JavaScript:alert(3)', 'data:text/html,x', '/relative',"
                " 'https://runbooks.example.invalid/x'].map(safeHref)"
            )
            assert checked == [None, None, None, None, "https://runbooks.example.invalid/x"]
            page.wait_for_timeout(500)
            assert dialogs == []
            assert browser.errors == []
    finally:
        topology.stop()
        alertmanager.terminate()
        alertmanager.wait(10)
