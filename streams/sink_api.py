"""Asking a running sink's JSON API from a command (``journeywatch sql``, ``journeywatch
customer``): the sink owns the embedded ClickHouse, so while journeywatch runs the commands go
through it. One request, signed in with the token of the settings (or of the local run), the
JSON answer, and errors the command turns into its own words.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pipeline.settings import Settings
from streams.webauth import client_token

SIGN_IN_HINT = " (set JW_WEB_READ_TOKEN or JW_WEB_ADMIN_TOKEN to a token of that sink)"


class SinkApiError(Exception):
    """The sink answered with an error: ``message`` is its own (the answer's ``error``) or
    ``HTTP <status>``; ``status`` its HTTP status, None when there was no answer."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status


class NotAnApiUrl(SinkApiError):
    """``--api`` is not an http(s) URL: nothing was asked."""


class SinkUnreachable(SinkApiError):
    """No answer at all (nothing listens there, a time-out, a name that does not resolve)."""


def auth_headers(settings: Settings) -> dict[str, str]:
    """The sink's API wants a token: the one of these settings (or of the local run)."""
    token = client_token(settings)
    return {"Authorization": f"Bearer {token}"} if token else {}


def call_sink_api(
    settings: Settings,
    api: str,
    path: str,
    body: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """``GET api + path`` (``POST`` of ``body`` as JSON when given) on the sink at ``api``
    (``http(s)://host:port``), signed in; its JSON answer."""
    if not api.startswith(("http://", "https://")):
        raise NotAnApiUrl("--api must be an http(s) URL", api)
    url = api.rstrip("/") + path
    headers = auth_headers(settings)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(  # noqa: S310 - http(s), checked above
        url, data=data, headers=headers, method="GET" if body is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            message = str(json.loads(exc.read())["error"])
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise SinkApiError(message, url, exc.code) from exc
    except OSError as exc:
        raise SinkUnreachable(
            f"cannot reach journeywatch at {api} ({exc}): start it with `make run` (or "
            "`journeywatch run`), or give the URL of a running sink with --api",
            url,
        ) from exc
