"""Segment's browser SDK, ``@segment/analytics-next`` as npm installs it (tests/browser_sdk,
``make install``), loaded by a test page in headless Chromium and sending to a running
collector on the embedded broker: the journey of tests/integration/test_segment.py, compared
with the same journey in the native contract; a delivery whose answer is lost is retried by the
SDK with the same message id and counts once; a malformed call gets the documented 400."""

from __future__ import annotations

import functools
import http.server
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.broker import EmbeddedBroker
from tests.browser import Browser, chromium
from tests.helpers import REPO, serving, wait_until
from tests.integration.test_segment import (
    JOURNEY_ANON,
    WEB_KEY,
    Running,
    Step,
    assert_same_journey,
    at,
    journey_start,
    journey_steps,
    running_collector,
    send_native_journey,
    stored,
)

pytestmark = pytest.mark.integration
SITE = REPO / "tests" / "browser_sdk"
PACKAGE = SITE / "node_modules" / "@segment" / "analytics-next"
BUNDLES = "/analytics-next/bundles/"  # where analytics-next loads its chunks from (cdnURL)

JOURNEY_JS = """
async ({ steps, start, anonymousId }) => {
  const analytics = window.journeywatch
  await analytics.setAnonymousId(anonymousId)
  for (const step of steps) {
    const options = { timestamp: new Date(start + step.after_s * 1000) }
    const a = step.args
    if (step.call === 'page') await analytics.page(a.category, a.name, a.properties || {}, options)
    else if (step.call === 'track') await analytics.track(a.event, a.properties || {}, options)
    else if (step.call === 'identify') await analytics.identify(a.user_id, a.traits, options)
    else throw new Error('unknown call ' + step.call)
  }
}
"""


class _Site(http.server.SimpleHTTPRequestHandler):
    """tests/browser_sdk, and analytics-next's chunks where it asks for them."""

    def translate_path(self, path: str) -> str:
        if path.startswith(BUNDLES):
            name = path[len(BUNDLES) :].split("?")[0]
            return str(PACKAGE / "dist" / "umd" / Path(name).name)
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_site() -> Iterator[str]:
    """The test page on a loopback port (another origin than the collector's, as a site)."""
    assert (PACKAGE / "dist" / "umd" / "index.js").exists(), (
        f"{PACKAGE} is missing: run make install (npm ci in tests/browser_sdk)"
    )
    site = functools.partial(_Site, directory=str(SITE))
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), site)) as url:
        yield url


@pytest.fixture()
def collector(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Running]:
    yield from running_collector(broker, tmp_path)


def send_browser_journey(
    browser: Browser,
    site: str,
    url: str,
    key: str,
    start: datetime,
    steps: list[Step],
    anonymous: str,
) -> str:
    """The journey through analytics-next on the test page (``site``) to the collector at
    ``url``. The confirmation's first delivery reaches the collector but its answer is lost
    (a 500): the SDK sends it again; returns its message id once the retry was answered."""
    lost: list[str] = []

    def lose_the_first_answer(route: Any) -> None:
        body = route.request.post_data_buffer or b""
        if b"Checkout Confirmation" in body and not lost:
            response = route.fetch()
            assert response.status == 200, response.text()
            lost.append(orjson.loads(body)["messageId"])
            route.fulfill(status=500, body="lost", headers={"Access-Control-Allow-Origin": "*"})
        else:
            route.continue_()

    def is_retry(response: Any) -> bool:
        return "x-retry-count" in response.request.headers

    page = browser.page
    page.route(f"{url}/v1/**", lose_the_first_answer)
    page.goto(f"{site}/segment.html?key={key}&host={url.removeprefix('http://')}")
    # Playwright's synchronous API handles the route only inside its calls: the SDK's retry,
    # a second or so later, is awaited as a response.
    with page.expect_response(is_retry, timeout=30_000) as retried:
        page.evaluate(
            JOURNEY_JS,
            {
                "steps": [{"call": s.call, "after_s": s.after_s, "args": s.args} for s in steps],
                "start": int(start.timestamp() * 1000),
                "anonymousId": anonymous,
            },
        )
    assert retried.value.status == 200
    assert retried.value.request.headers["x-retry-count"] == "1"
    assert [orjson.loads(retried.value.request.post_data_buffer)["messageId"]] == lost
    return lost[0]


def test_analytics_next_in_chromium_sends_the_journey_of_the_native_contract(
    collector: Running,
) -> None:
    """The journey as in test_segment, a lost answer retried by the SDK and counted once, and
    a malformed call: the documented 400, dropped by the SDK, nothing stored."""
    start = journey_start()
    steps = journey_steps()
    with static_site() as site, chromium(offline=True) as browser:
        lost = send_browser_journey(
            browser, site, collector.url, WEB_KEY, start, steps, JOURNEY_ANON
        )
        page = browser.page
        sent: list[bytes] = []
        page.on("request", lambda r: sent.append(r.post_data_buffer or b""))
        with page.expect_response(
            lambda r: b"Bad Revenue" in (r.request.post_data_buffer or b"")
        ) as bad:
            page.evaluate("() => window.journeywatch.track('Bad Revenue', {revenue: 'lots'})")
        answer = bad.value
        assert answer.status == 400, answer.text()
        assert answer.json()["code"] == "invalid_request"
        assert "properties.revenue" in answer.json()["message"]
        assert sum(b"Bad Revenue" in body for body in sent) == 1
        # the browser's own report of the two refused requests, nothing else (no script
        # error, no request to Segment's CDN: the page is offline but for loopback)
        assert sorted(e.rsplit(" (", 1)[0] for e in browser.errors) == [
            "Failed to load resource: the server responded with a status of 400",
            "Failed to load resource: the server responded with a status of 500",
        ], browser.errors

    def delivered() -> list[dict[str, Any]] | None:
        mine = [r for r in stored(collector) if r["source"] == "web-sdk"]
        return mine if len(mine) == len(steps) + 1 else None

    from_sdk = wait_until(delivered, 10, "the journey and the retried delivery stored")
    native_ids = send_native_journey(collector.url, start)
    native = [r for r in stored(collector) if r["event_id"] in native_ids]
    copies = [r for r in from_sdk if r["event_id"] == lost]
    assert len(copies) == 2  # the SDK's retry, with the message id of the first delivery
    assert {k: v for k, v in copies[0].items() if k not in ("occurred_at", "received_at")} == {
        k: v for k, v in copies[1].items() if k not in ("occurred_at", "received_at")
    }
    first, again = (at(c["occurred_at"]) for c in copies)
    assert abs(first - again) < timedelta(seconds=2)  # each corrected by its own sentAt
    assert all(b"Bad Revenue" not in orjson.dumps(r) for r in from_sdk)
    # the engine counts the retried confirmation once: the journey is the native one
    assert_same_journey(from_sdk, native)
