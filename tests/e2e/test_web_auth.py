"""Sign-in for the sink's pages and API, against the real sink on a real broker: anonymous
requests to every page and API get 401 or the sign-in page; the read-only token reads but gets
403 on admin endpoints; signing in through the page (HTTP and headless Chromium) gives a
session cookie the event stream works with; a browser's POST without its CSRF token is refused;
every response carries the security headers; the trusted proxy's user header counts only from
its address; and no token or cookie reaches the sink's log."""

from __future__ import annotations

import http.client
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.broker import EmbeddedBroker
from streams.monitoring import start_local_monitoring
from streams.webauth import CONTENT_SECURITY_POLICY
from tests.browser import chromium
from tests.e2e.stack import Topology
from tests.helpers import (
    REPO,
    WEB_ADMIN_TOKEN,
    WEB_READ_TOKEN,
    free_port,
    http_get,
    jw_env,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.e2e

WRONG_TOKEN = "wrong-token-that-must-not-be-logged-42"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def cookies(self) -> dict[str, str]:
        """Set-Cookie headers: name → the whole header (value and attributes)."""
        found = {}
        for header in self.headers.get_all("Set-Cookie") or []:
            found[header.split("=", 1)[0]] = header
        return found


def call(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str = "127.0.0.1",
) -> Answer:
    """One request, redirects not followed, from ``source`` (a loopback address)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def routes() -> list[str]:
    """Every path the sink registers (``app.page("...")`` in its modules), with its
    parameters filled in: the test cannot forget a page added later."""
    paths = set()
    for module in ("streams/sink.py", "streams/webauth.py", "streams/web.py"):
        for found in re.findall(r'\.page\("([^"]+)"\)', (REPO / module).read_text()):
            paths.add(
                found.replace("{journey}", "online_purchase")
                .replace("{name}", "live.js")
                .replace("/map/fonts/live.js", "/map/fonts/DejaVuSans-subset.ttf")
            )
    assert {"/", "/map", "/api/v1/stats", "/api/v1/live/stream", "/signin"} <= paths
    return sorted(paths)


@pytest.fixture()
def sink(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Topology]:
    topology = Topology(broker, tmp_path, log_level="INFO", live_refresh_s=0.5)
    try:
        topology.start_sink()
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{topology.status_port}/readyz")[0] == 200,
            90,
            "the sink",
        )
        yield topology
    finally:
        topology.stop()


def assert_security_headers(answer: Answer, what: str) -> None:
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, what
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY.split("script-src")[1].split(";")[0]
    assert answer.headers["X-Content-Type-Options"] == "nosniff", what
    assert answer.headers["Referrer-Policy"] == "same-origin", what
    assert answer.headers["X-Frame-Options"] == "DENY", what


def sign_in(port: int, token: str) -> tuple[str, Answer]:
    """The sign-in page's form, posted: the session cookie's value and the answer."""
    form = call(port, "GET", "/signin?next=/map")
    assert form.status == 200
    nonce = cookie_value(form.cookies()["jw_signin"])
    csrf = re.search(rb'name="csrf" value="([^"]+)"', form.body)
    assert csrf is not None
    answer = call(
        port,
        "POST",
        "/signin",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"jw_signin={nonce}",
        },
        body=urllib.parse.urlencode(
            {"token": token, "csrf": csrf.group(1).decode(), "next": "/map"}
        ).encode(),
    )
    session = answer.cookies().get("jw_session", "")
    return (cookie_value(session) if session else ""), answer


def test_anonymous_requests_get_401_or_the_sign_in_page_and_tokens_have_roles(
    sink: Topology,
) -> None:
    port = sink.status_port
    for path in routes():
        method = "POST" if path in ("/signout", "/api/v1/auth/sessions/revoke") else "GET"
        anonymous = call(port, method, path)
        assert_security_headers(anonymous, path)
        if path == "/signin":
            assert anonymous.status == 200 and b'name="token"' in anonymous.body
        elif path in ("/livez", "/readyz", "/metrics"):
            assert anonymous.status == 200, path  # open by default (JW_WEB_PROTECT_HEALTH)
        elif path.startswith("/api/") or method == "POST":
            assert anonymous.status == 401, (path, anonymous.status)
            assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
            assert b"Authorization: Bearer" in anonymous.body
        else:
            assert anonymous.status == 303, (path, anonymous.status)
            location = anonymous.headers["Location"]
            assert location == "/signin?" + urllib.parse.urlencode({"next": path})
    # Faust's own pages and anything unknown: no sign-in, no answer
    for path in ("/router/", "/table/", "/graph/", "/nothing-here", "/api/v1/nothing"):
        assert call(port, "GET", path).status in (303, 401), path
    lookup = orjson.dumps({"event_ids": ["a"]})
    assert call(port, "POST", "/api/v1/touchpoints/stored", body=lookup).status == 401
    assert call(port, "GET", "/api/v1/stats", headers={"Authorization": "Bearer"}).status == 401
    wrong = {"Authorization": f"Bearer {WRONG_TOKEN}"}
    assert call(port, "GET", "/api/v1/stats", headers=wrong).status == 401

    # the read-only token reads everything, the lookup (a read) included; admin: 403
    read = {"Authorization": f"Bearer {WEB_READ_TOKEN}"}
    for path in ("/", "/map/online_purchase", "/api/v1/stats", "/api/v1/live", "/static/map.js"):
        answer = call(port, "GET", path, headers=read)
        assert answer.status == 200, (path, answer.status)
        assert_security_headers(answer, path)
    assert (
        call(port, "GET", "/static/live.js", headers=read)
        .headers["Content-Type"]
        .startswith("text/javascript")
    )
    stored = call(
        port,
        "POST",
        "/api/v1/touchpoints/stored",
        headers={**read, "Content-Type": "application/json"},
        body=lookup,
    )
    assert (stored.status, stored.json()) == (200, {"stored": []})
    refused = call(port, "POST", "/api/v1/auth/sessions/revoke", headers=read)
    assert refused.status == 403 and "admin role" in refused.json()["error"]
    assert call(port, "GET", "/api/v1/auth/session", headers=read).json() == {
        "user": "read token",
        "role": "read",
        "via": "token",
        "csrf_token": None,
    }
    admin = {"Authorization": f"Bearer {WEB_ADMIN_TOKEN}"}
    assert call(port, "POST", "/api/v1/auth/sessions/revoke", headers=admin).status == 200

    # the pages carry no inline script: their scripts come from /static
    for path in ("/", "/map/online_purchase"):
        page = call(port, "GET", path, headers=read).body.decode()
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == [], path
        assert not re.search(r"\son[a-z]+=", page), path
    assert_no_secret_in_logs(sink, [])


def test_sign_in_by_the_page_a_session_cookie_and_csrf(sink: Topology) -> None:
    port = sink.status_port
    # a wrong token, or the form without its nonce cookie: no session
    value, answer = sign_in(port, WRONG_TOKEN)
    assert answer.status == 401 and value == "" and b"not valid" in answer.body
    forged = call(
        port,
        "POST",
        "/signin",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=urllib.parse.urlencode({"token": WEB_ADMIN_TOKEN, "csrf": "x"}).encode(),
    )
    assert forged.status == 403 and "jw_session" not in forged.cookies()

    value, answer = sign_in(port, WEB_READ_TOKEN)
    assert answer.status == 303 and answer.headers["Location"] == "/map"
    set_cookie = answer.cookies()["jw_session"].lower()
    for attribute in ("httponly", "secure", "samesite=lax", "path=/", "max-age=43200"):
        assert attribute in set_cookie, set_cookie
    assert WEB_READ_TOKEN not in answer.cookies()["jw_session"]
    cookie = {"Cookie": f"jw_session={value}"}
    assert call(port, "GET", "/api/v1/stats", headers=cookie).status == 200
    assert call(port, "GET", "/", headers=cookie).status == 200
    session = call(port, "GET", "/api/v1/auth/session", headers=cookie).json()
    assert session["role"] == "read" and session["via"] == "session"
    csrf = session["csrf_token"]

    # the event stream with the cookie: the snapshot arrives
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/api/v1/live/stream", headers=cookie)
    stream = connection.getresponse()
    assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
    assert stream.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert stream.readline().startswith(b"id: ")
    connection.close()

    # a browser's POST needs its session's CSRF token, and never comes from another site
    lookup = orjson.dumps({"event_ids": ["a"]})
    json_type = {"Content-Type": "application/json"}
    without = call(
        port, "POST", "/api/v1/touchpoints/stored", headers=cookie | json_type, body=lookup
    )
    assert without.status == 403 and "CSRF" in without.json()["error"]
    other = {"X-CSRF-Token": "0" * 64}
    assert (
        call(
            port,
            "POST",
            "/api/v1/touchpoints/stored",
            headers=cookie | json_type | other,
            body=lookup,
        ).status
        == 403
    )
    with_token = cookie | json_type | {"X-CSRF-Token": csrf}
    assert (
        call(port, "POST", "/api/v1/touchpoints/stored", headers=with_token, body=lookup).status
        == 200
    )
    cross = with_token | {"Sec-Fetch-Site": "cross-site"}
    assert (
        call(port, "POST", "/api/v1/touchpoints/stored", headers=cross, body=lookup).status == 403
    )
    # the read-only session cannot revoke (admin) even with its CSRF token
    revoke = call(port, "POST", "/api/v1/auth/sessions/revoke", headers=with_token)
    assert revoke.status == 403
    # sign-out: a form post, CSRF checked
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert call(port, "POST", "/signout", headers=cookie | form, body=b"csrf=nope").status == 403
    out = call(port, "POST", "/signout", headers=cookie | form, body=f"csrf={csrf}".encode())
    assert out.status == 303 and out.headers["Location"] == "/signin"

    # an admin revokes every browser session: the cookie stops working at once
    admin_value, _ = sign_in(port, WEB_ADMIN_TOKEN)
    admin_cookie = {"Cookie": f"jw_session={admin_value}"}
    admin_csrf = call(port, "GET", "/api/v1/auth/session", headers=admin_cookie).json()[
        "csrf_token"
    ]
    watching = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    watching.request("GET", "/api/v1/live/stream", headers=cookie)  # a page left open
    open_stream = watching.getresponse()
    assert open_stream.status == 200 and open_stream.readline().startswith(b"id: ")
    revoked = call(
        port,
        "POST",
        "/api/v1/auth/sessions/revoke",
        headers=admin_cookie | {"X-CSRF-Token": admin_csrf},
    )
    assert revoked.status == 200
    revoked_at = time.monotonic()
    assert call(port, "GET", "/api/v1/stats", headers=cookie).status == 401
    assert call(port, "GET", "/api/v1/stats", headers=admin_cookie).status == 401
    # the stream open with a revoked session ends (at its next push or keep-alive, ≤ 15 s)
    open_stream.read()
    assert time.monotonic() - revoked_at < 20
    watching.close()
    assert_no_secret_in_logs(sink, [value, admin_value, csrf, admin_csrf])


def test_the_browser_signs_in_and_the_pages_run_under_the_policy(sink: Topology) -> None:
    base = f"http://127.0.0.1:{sink.status_port}"
    with chromium(offline=True) as browser:
        page = browser.page
        violations: list[str] = []
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.goto(base + "/map/online_purchase?since=1h")
        assert page.url.startswith(base + "/signin?next=")
        page.fill("#token", WRONG_TOKEN)
        page.click("button[type=submit]")
        assert "not valid" in (page.text_content("[role=alert]") or "")
        browser.errors.clear()  # the 401 of the refused sign-in, as the console reports it
        page.fill("#token", WEB_READ_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/map/online_purchase?since=1h")
        page.locator("#status").wait_for()
        wait_until(lambda: page.evaluate("document.body.dataset.loads"), 20, "the map drawn")
        cookies = {c["name"]: c for c in page.context.cookies()}
        session = cookies["jw_session"]
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
        assert page.evaluate("document.cookie") == ""  # HTTP-only: no script reads it

        # the live page: its event stream connects with the cookie
        page.goto(base + "/")
        wait_until(
            lambda: page.get_attribute("#connection", "data-state") == "live",
            20,
            "the live page's stream",
        )
        wait_until(lambda: page.evaluate("document.body.dataset.version"), 20, "figures")
        assert "read token (read)" in (page.text_content("#who") or "")
        # an inline script would not run: the policy holds in the browser
        page.evaluate(
            """() => { const s = document.createElement("script");
                       s.textContent = "window.__inline = 1"; document.body.append(s); }"""
        )
        assert page.evaluate("window.__inline") is None
        assert any("Content Security Policy" in v for v in violations)
        violations.clear()
        browser.errors.clear()

        # signing out ends the session in this browser
        page.click("#signout button")
        page.wait_for_url(base + "/signin")
        assert page.request.get(base + "/api/v1/live").status == 401
        page.goto(base + "/")
        assert page.url.startswith(base + "/signin")
        assert violations == [] and browser.errors == [], browser.errors
    assert_no_secret_in_logs(sink, [session["value"]])


def test_a_trusted_proxys_user_header_counts_from_its_address_only(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topology = Topology(
        broker,
        tmp_path,
        web_auth="proxy",
        web_trusted_proxies='["127.0.0.2"]',
        web_proxy_user_header="X-Auth-Request-User",
        web_proxy_admins='["ops@example.com"]',
        web_protect_health="true",
    )
    port = topology.status_port
    try:
        topology.start_sink()
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 90, "sink")
        alice = {"X-Auth-Request-User": "alice@example.com"}
        proxy = "127.0.0.2"
        assert call(port, "GET", "/api/v1/stats", headers=alice).status == 401  # not the proxy
        assert call(port, "GET", "/api/v1/stats", headers=alice, source=proxy).status == 200
        assert call(port, "GET", "/api/v1/stats", source=proxy).status == 401  # no user
        assert call(port, "GET", "/", headers=alice, source=proxy).status == 200
        # protected health: the probes need a token now
        assert call(port, "GET", "/metrics").status == 401
        read = {"Authorization": f"Bearer {WEB_READ_TOKEN}"}
        assert call(port, "GET", "/metrics", headers=read).status == 200
        # roles by user; the proxy's credentials are ambient too: CSRF checked
        revoke = "/api/v1/auth/sessions/revoke"
        assert call(port, "POST", revoke, headers=alice, source=proxy).status == 403
        ops = {"X-Auth-Request-User": "ops@example.com"}
        assert call(port, "POST", revoke, headers=ops, source=proxy).status == 403  # no CSRF
        session = call(port, "GET", "/api/v1/auth/session", headers=ops, source=proxy).json()
        assert (session["user"], session["role"], session["via"]) == (
            "ops@example.com",
            "admin",
            "proxy",
        )
        with_csrf = ops | {"X-CSRF-Token": session["csrf_token"]}
        assert call(port, "POST", revoke, headers=with_csrf, source=proxy).status == 200

        # a real Prometheus scrapes the protected /metrics with the token file it is given
        token_file = tmp_path / "scrape.token"
        token_file.write_text(WEB_READ_TOKEN)
        monitoring = start_local_monitoring(
            tmp_path / "monitoring",
            {"journeywatch-sink": [f"127.0.0.1:{port}"], "anonymous": [f"127.0.0.1:{port}"]},
            free_port(),
            free_port(),
            tmp_path,
            scrape_interval="1s",
            scrape_tokens={"journeywatch-sink": token_file},
        )
        assert monitoring is not None, "prometheus is installed by make test"
        try:

            def scraped() -> bool:
                data = monitoring.get_json(f"{monitoring.prometheus_url}/api/v1/targets")
                active = data["data"]["activeTargets"] if data else []
                health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in active}
                return health.get("journeywatch-sink", ("",))[0] == "up" and "401" in str(
                    health.get("anonymous")
                )

            wait_until(scraped, 60, "Prometheus scraping the sink's protected /metrics", 0.5)
        finally:
            monitoring.stop()
    finally:
        topology.stop()


def test_the_sink_refuses_a_public_address_without_sign_in(tmp_path: Path) -> None:
    env = jw_env(
        broker_url="127.0.0.1:1",
        web_host="0.0.0.0",  # what is refused
        web_admin_token=None,
        web_read_token=None,
        data_dir=tmp_path,
    )
    result = run_cli(["sink"], env, timeout=60)
    assert result.returncode == 1
    for setting in ("JW_WEB_ADMIN_TOKEN", "JW_WEB_READ_TOKEN", "JW_WEB_AUTH=off"):
        assert setting in result.stderr, result.stderr


def assert_no_secret_in_logs(topology: Topology, values: list[str]) -> None:
    """No token, session cookie or CSRF token in any log the stack wrote."""
    secrets = [WEB_ADMIN_TOKEN, WEB_READ_TOKEN, WRONG_TOKEN, *[v for v in values if v]]
    logs = sorted(topology.tmp.glob("*.log"))
    assert any(p.name == "sink.log" for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{path.name} holds a secret ({secret[:6]}…)"


def test_the_sink_ends_its_event_streams_when_it_stops(sink: Topology) -> None:
    """A browser's open live stream does not hold the sink's shutdown: on SIGTERM the stream
    ends (end of stream, no keep-alive first: it used to wait out the 15 s keep-alive, and
    then the web server's shutdown time-out) and the sink exits cleanly."""
    assert sink.sink is not None
    connection = http.client.HTTPConnection("127.0.0.1", sink.status_port, timeout=60)
    connection.request(
        "GET", "/api/v1/live/stream", headers={"Authorization": f"Bearer {WEB_READ_TOKEN}"}
    )
    stream = connection.getresponse()
    assert stream.status == 200 and stream.readline().startswith(b"id: ")
    sink.sink.terminate()
    rest = stream.read()  # until the server ends the stream
    connection.close()
    assert b"keep-alive" not in rest, rest[-200:]
    assert sink.sink.wait(30) == 0
