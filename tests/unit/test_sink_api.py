"""streams/sink_api.py: the one way ``journeywatch sql`` and ``journeywatch customer`` ask a
running sink, against a loopback server that answers by script."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.settings import Settings
from sinks.clickhouse.customers import TimelineError
from streams.cli import main
from streams.customers import timeline_via_api
from streams.sink_api import (
    SIGN_IN_HINT,
    NotAnApiUrl,
    SinkApiError,
    SinkUnreachable,
    call_sink_api,
)
from tests.helpers import free_port, serving

TOKEN = "read-token-0123456789abcdef"


class Sink(BaseHTTPRequestHandler):
    """Answers ``answers[path]`` (status, body) and records what it was asked."""

    answers: dict[str, tuple[int, bytes]] = {}
    asked: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        Sink.asked.append(
            {
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "content_type": self.headers.get("Content-Type"),
                "body": body,
            }
        )
        status, answer = Sink.answers.get(self.path, (404, b"not here"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def sink() -> Iterator[str]:
    Sink.answers, Sink.asked = {}, []
    with serving(ThreadingHTTPServer(("127.0.0.1", free_port()), Sink)) as url:
        yield url


def settings() -> Settings:
    return Settings(web_read_token=TOKEN)


def test_a_get_and_a_post_are_signed_in_and_answer_json(sink: str) -> None:
    Sink.answers = {
        "/api/v1/customers/customer_id:c1": (200, b'{"person_id": "c:c1"}'),
        "/api/v1/sql": (200, b'{"rows": [[1]]}'),
    }
    assert call_sink_api(settings(), sink + "/", "/api/v1/customers/customer_id:c1") == {
        "person_id": "c:c1"
    }
    assert call_sink_api(settings(), sink, "/api/v1/sql", {"query": "SELECT 1"}) == {"rows": [[1]]}
    get, post = Sink.asked
    assert get["method"] == "GET" and get["body"] == b"" and get["content_type"] is None
    assert post["method"] == "POST" and json.loads(post["body"]) == {"query": "SELECT 1"}
    assert post["content_type"] == "application/json"
    assert get["authorization"] == post["authorization"] == f"Bearer {TOKEN}"


def test_errors_carry_the_sinks_message_and_status(sink: str) -> None:
    Sink.answers = {"/refused": (403, b'{"error": "read-only token"}'), "/broken": (500, b"oops")}
    with pytest.raises(SinkApiError) as refused:
        call_sink_api(settings(), sink, "/refused")
    assert (refused.value.message, refused.value.status) == ("read-only token", 403)
    assert refused.value.url == sink + "/refused"
    with pytest.raises(SinkApiError) as broken:
        call_sink_api(settings(), sink, "/broken")
    assert (broken.value.message, broken.value.status) == ("HTTP 500", 500)
    with pytest.raises(NotAnApiUrl):
        call_sink_api(settings(), "ftp://x", "/")
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SinkUnreachable) as unreachable:
        call_sink_api(settings(), nobody, "/")
    assert f"cannot reach journeywatch at {nobody}" in unreachable.value.message
    assert unreachable.value.status is None


def test_the_customer_timeline_and_sql_commands_say_the_same_things_their_own_way(
    sink: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    Sink.answers = {
        "/api/v1/customers/customer_id:c1": (401, b'{"error": "sign in"}'),
        "/api/v1/sql": (401, b'{"error": "sign in"}'),
    }
    with pytest.raises(TimelineError) as timeline:
        timeline_via_api(settings(), sink, "customer_id:c1")
    assert timeline.value.status == 401 and str(timeline.value) == "sign in" + SIGN_IN_HINT
    with pytest.raises(TimelineError) as bad_url:
        timeline_via_api(settings(), "127.0.0.1:8080", "customer_id:c1")
    assert bad_url.value.status == 400 and "http(s)" in str(bad_url.value)
    with pytest.raises(TimelineError) as gone:
        timeline_via_api(settings(), f"http://127.0.0.1:{free_port()}", "customer_id:c1")
    assert gone.value.status == 503 and "`make run`" in str(gone.value)

    for name in [n for n in os.environ if n.startswith("JW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("JW_WEB_READ_TOKEN", TOKEN)
    monkeypatch.setenv("JW_PII_HASH_KEY", "test-key")
    monkeypatch.setenv("JW_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    customer = runner.invoke(main, ["customer", "c1", "--api", sink])
    assert customer.exit_code == 1 and "sign in" + SIGN_IN_HINT in customer.output
    sql = runner.invoke(main, ["sql", "--api", sink, "SELECT 1"])
    assert sql.exit_code == 1 and "sign-in needed (HTTP 401)" in sql.output
    assert f"{sink}/api/v1/sql" in sql.output
    missing = runner.invoke(main, ["sql", "--api", sink + "/nothing", "SELECT 1"])
    assert missing.exit_code == 1 and "is this a journeywatch sink" in missing.output
    not_url = runner.invoke(main, ["sql", "--api", "127.0.0.1:1", "SELECT 1"])
    assert not_url.exit_code == 2 and "must be an http(s) URL" in not_url.output
    assert {a["authorization"] for a in Sink.asked} == {f"Bearer {TOKEN}"}
    assert [a["path"] for a in Sink.asked] == [
        "/api/v1/customers/customer_id:c1",
        "/api/v1/customers/customer_id:c1",
        "/api/v1/sql",
        "/nothing/api/v1/sql",
    ]
