"""The live page's feed: figures recomputed while someone watches, pushed to every open page.

One loop per sink process computes the snapshot (sinks/clickhouse/live.py) every
``live_refresh_s`` while a page is open or the JSON API was read in the last half minute, adds
the alerts firing in Alertmanager, and wakes every server-sent-events stream when the figures
changed. However many browsers watch, ClickHouse answers one set of queries per refresh.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from pipeline.settings import Settings
from streams.monitoring import alertmanager_credentials, basic_auth_header

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
WATCHED_FOR_S = 30.0  # after a JSON read, keep the figures fresh this long


def safe_link(value: object) -> str | None:
    """``value`` when it is an absolute http(s) URL a page may use as a link, else None.

    Alert annotations are text from whoever wrote the alert: a ``javascript:`` or ``data:``
    URL must never become an ``href``.
    """
    if not isinstance(value, str) or not value:
        return None
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in value):
        return None  # browsers drop or reinterpret these: what they open is not what we checked
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return value


def _dashboard_link(annotations: dict[str, str], grafana_url: str | None) -> str | None:
    """The alert's dashboard: the rules give a path in Grafana (``/d/jw-oncall?...``)."""
    link = annotations.get("dashboard_url") or annotations.get("dashboard")
    if not link or not isinstance(link, str) or not link.startswith("/") or link.startswith("//"):
        return link
    return grafana_url.rstrip("/") + link if grafana_url else None


def _link_fields(name: str, value: object) -> dict[str, str | None]:
    """``<name>_url``: the link when it is safe; ``<name>_text``: the text shown instead."""
    text = value if isinstance(value, str) and value else None
    url = safe_link(text)
    return {f"{name}_url": url, f"{name}_text": None if url else text}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is not followed (urllib would send the credentials on to wherever it
    points): it is raised as the ``HTTPError`` of the 3xx answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def without_userinfo(url: str) -> str:
    """``url`` without any ``user:password@``: what a status text may show."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(the configured URL)"
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _hide_userinfo(text: str, url: str) -> str:
    """``text`` (an error quoting ``url``, say) with the URL's userinfo taken out."""
    netloc = url.split("://", 1)[-1].split("/", 1)[0]
    userinfo = netloc.rpartition("@")[0]
    return text.replace(userinfo + "@", "").replace(userinfo, "[redacted]") if userinfo else text


def fetch_alerts(
    alertmanager_url: str,
    grafana_url: str | None = None,
    timeout_s: float = 1.5,
    *,
    auth: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The alerts firing now (not silenced or inhibited), newest first, as the page shows them.

    ``auth``: basic-auth user and password (Alertmanager's web config asks for them). A
    redirect is not followed (raised as the 3xx ``HTTPError``): the credentials go only to
    ``alertmanager_url``. A ``user:password@`` in the URL is sent as basic auth (when ``auth``
    is None), never as part of the address. Links
    (runbook, dashboard) are passed on only when they are absolute http(s) URLs; anything else
    is given as text (``runbook_text``, ``dashboard_text``) with no URL.
    """
    parts = urllib.parse.urlsplit(alertmanager_url)
    if auth is None and parts.username is not None:  # http://user:password@host: basic auth
        auth = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    url = (
        without_userinfo(alertmanager_url).rstrip("/")
        + "/api/v2/alerts?active=true&silenced=false&inhibited=false&unprocessed=false"
    )
    request = urllib.request.Request(url)  # noqa: S310 - operator URL
    if auth is not None:
        request.add_header("Authorization", basic_auth_header(*auth))
    with _OPENER.open(request, timeout=timeout_s) as response:
        alerts = orjson.loads(response.read())
    shown = []
    for alert in alerts:
        labels = alert.get("labels", {})
        annotations = alert.get("annotations", {})
        shown.append(
            {
                "name": labels.get("alertname", ""),
                "severity": labels.get("severity"),
                "journey": labels.get("journey"),
                "stage": labels.get("stage"),
                "channel": labels.get("channel"),
                "segment": labels.get("segment"),
                "summary": annotations.get("summary") or annotations.get("description"),
                **_link_fields("runbook", annotations.get("runbook_url")),
                **_link_fields("dashboard", _dashboard_link(annotations, grafana_url)),
                "starts_at": alert.get("startsAt"),
            }
        )
    shown.sort(key=lambda a: a["starts_at"] or "", reverse=True)
    return shown


def _credentials_for(url: str | None) -> tuple[str, str] | None:
    """The process's settings (``JW_ALERTMANAGER_*``) for the Alertmanager at ``url``, when the
    feed was given no credentials: whether the local run's password may be sent (loopback
    only) is decided on ``url``, the address actually called, not on the settings' own."""
    return alertmanager_credentials(Settings().model_copy(update={"alertmanager_url": url}))


class LiveFeed:
    """The newest snapshot, its version, and the streams waiting for the next one."""

    # ``run`` in the figures: the processes of `journeywatch run` and their restarts (the sink
    # that run started sets it; streams/supervisor.py)
    run_status: Callable[[], dict[str, Any] | None] | None = None

    def __init__(
        self,
        compute: Callable[[], dict[str, Any]],
        pool: Executor,
        refresh_s: float,
        alertmanager_url: str | None = None,
        grafana_url: str | None = None,
        *,
        alertmanager_auth: Callable[[], tuple[str, str] | None] | None = None,
        segment: str | None = None,
    ) -> None:
        self._compute = compute
        # the figures of one segment's journeys: its alerts, and those of no segment
        self.segment = segment
        # asked before each fetch: the local run's password file appears after the sink starts
        self.alertmanager_auth = alertmanager_auth or (
            lambda: _credentials_for(self.alertmanager_url)
        )
        self._pool = pool
        self.refresh_s = refresh_s
        self.alertmanager_url = alertmanager_url
        self.grafana_url = grafana_url
        self.payload = b""
        self._figures = b""
        self.version = 0
        self.computed_at = 0.0
        self.watchers = 0
        self._last_read = 0.0
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False

    def close(self) -> None:
        """The process is stopping: every stream ends now (a stream waiting for the next
        snapshot would keep the web server's shutdown waiting until its next keep-alive)."""
        self._closing = True
        self._changed.set()

    def watched(self) -> bool:
        return self.watchers > 0 or time.monotonic() - self._last_read < WATCHED_FOR_S

    async def tick(self) -> None:
        """Called every ``refresh_s``: recompute while someone is watching."""
        if self.watched():
            await self.refresh()

    async def refresh(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            try:
                body = await loop.run_in_executor(self._pool, self._compute)
            except Exception as exc:  # keep serving the last figures; say what failed
                log.warning("live figures failed", extra={"error": str(exc)})
                return
            body["alerts"], body["alerts_status"] = await loop.run_in_executor(
                self._pool, self._alerts
            )
            if self.segment and body["alerts"] is not None:
                body["alerts"] = [
                    a for a in body["alerts"] if a.get("segment") in (None, self.segment)
                ]
            body["run"] = self.run_status() if self.run_status else None
            figures = orjson.dumps(body)
            self.computed_at = time.monotonic()
            changed = figures != self._figures
            if changed:
                self._figures = figures
                self.version += 1
            # computed_at: when the queries began; the figures hold everything stored by then
            body["version"] = self.version
            body["computed_at"] = started
            self.payload = orjson.dumps(body)
            if changed:  # streams push only new figures
                self._changed.set()
                self._changed = asyncio.Event()

    def _alerts(self) -> tuple[list[dict[str, Any]] | None, str]:
        url = self.alertmanager_url
        if not url:
            return None, "not configured (set JW_ALERTMANAGER_URL)"
        alerts, status = self._fetch(url)
        return alerts, _hide_userinfo(status, url)  # no user:password@ of the URL on the page

    def _fetch(self, url: str) -> tuple[list[dict[str, Any]] | None, str]:
        shown = without_userinfo(url)
        try:
            auth = self.alertmanager_auth()
        except ValidationError as exc:  # its text may quote a setting's value: names only
            names = ", ".join(
                sorted({f"JW_{e['loc'][0]}".upper() for e in exc.errors() if e["loc"]})
            )
            return None, f"cannot read the Alertmanager credentials: invalid settings {names}"
        except (OSError, ValueError) as exc:
            return None, f"cannot read the Alertmanager password: {exc}"
        try:
            return fetch_alerts(url, self.grafana_url, auth=auth), "ok"
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return None, (
                    f"Alertmanager at {shown} refused "
                    + ("the credentials" if auth else "a request without credentials")
                    + f" (HTTP {exc.code}): set JW_ALERTMANAGER_PASSWORD or "
                    "JW_ALERTMANAGER_PASSWORD_FILE"
                )
            if 300 <= exc.code < 400:
                return None, (
                    f"Alertmanager at {shown} redirected (HTTP {exc.code}); not followed, "
                    "the credentials go only to JW_ALERTMANAGER_URL: set it to the address "
                    "that answers"
                )
            return None, f"Alertmanager at {shown} answered HTTP {exc.code}"
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError: OSError
            return None, f"Alertmanager at {shown} unreachable: {type(exc).__name__}: {exc}"

    async def current(self) -> bytes:
        """The newest snapshot, recomputed first when it is older than one refresh."""
        self._last_read = time.monotonic()
        if not self.payload or time.monotonic() - self.computed_at > self.refresh_s:
            await self.refresh()
        return self.payload

    async def stream(
        self, request: web.Request, allowed: Callable[[], bool] | None = None
    ) -> web.StreamResponse:
        """Server-sent events: the snapshot now, then each new one as soon as it exists.

        ``allowed``: asked before every write (a push or a keep-alive); false ends the stream,
        so a session revoked or expired while the page stays open stops getting figures."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a reverse proxy must not buffer the stream
            }
        )
        await response.prepare(request)
        self.watchers += 1
        try:
            await self.current()
            sent = 0
            while not self._closing and (allowed is None or allowed()):
                changed = self._changed  # taken first: a refresh from here on wakes us
                if self.version != sent and self.payload:
                    sent = self.version
                    await response.write(b"id: %d\ndata: %s\n\n" % (sent, self.payload))
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
                    if self._closing:
                        break
                except TimeoutError:
                    if allowed is not None and not allowed():
                        break
                    await response.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page was closed
        finally:
            self.watchers -= 1
        return response
