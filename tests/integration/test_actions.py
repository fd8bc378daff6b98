"""``journeywatch actions test RULE`` against a real HTTP receiver on loopback, and the
``action_failures`` table (migration 0013) on a real embedded ClickHouse: a dead letter's row,
erased with its customer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest

from sinks.clickhouse.actions import ACTION_FAILURE_COLUMNS, action_failure_row
from sinks.clickhouse.erasure import Person, delete_person
from sinks.clickhouse.migrations import apply_migrations
from tests.helpers import ClickHouse, jw_env, run_cli

pytestmark = pytest.mark.integration

SECRET = "crm-s3cr3t-value-77"
HOOK_KEY = "xoxb-hook-key-5512"  # a chat's incoming webhook: its key is in the URL's path


class Receiver:
    """Answers every POST with ``status`` and records what it got."""

    def __init__(self) -> None:
        self.status = 201
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b'{"task": "CRM-42"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def journeys_file(tmp_path: Path, port: int) -> Path:
    defaults = resources.files("pipeline").joinpath("defaults/journeys.yaml").read_text()
    path = tmp_path / "journeys.yaml"
    path.write_text(
        defaults
        + f"""
actions:
  - name: detractor_callback
    when: {{nps_below: 7, journey: support_case}}
    webhook:
      url: http://127.0.0.1:{port}/crm/tasks
      headers: {{X-Api-Key: {{secret: crm}}}}
      body: {{title: "Call back {{customer_id}}", nps: "{{value}}", rule: "{{rule}}"}}
  - name: chat_alert
    when: {{negative_moment: call_abandoned}}
    webhook: {{url: {{secret: chat_hook}}, body: {{text: "{{customer_id}} hung up"}}}}
"""
    )
    return path


def test_actions_test_sends_one_example_and_prints_the_answer(
    tmp_path: Path, receiver: Receiver
) -> None:
    base = f"http://127.0.0.1:{receiver.port}"
    env = jw_env(
        journeys_file=journeys_file(tmp_path, receiver.port),
        action_secrets=json.dumps({"crm": SECRET, "chat_hook": f"{base}/hooks/T0/B0/{HOOK_KEY}"}),
        action_retry_initial_s=0.1,
        action_max_attempts=2,
    )
    done = run_cli(["actions", "test", "detractor_callback"], env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "answer after 1 tries: 201" in done.stdout and '{"task": "CRM-42"}' in done.stdout
    [request] = receiver.requests
    assert request["path"] == "/crm/tasks"
    assert request["headers"]["X-Api-Key"] == SECRET
    assert request["headers"]["Idempotency-Key"] == "0000000000000000:detractor_callback"
    assert request["body"] == {
        "title": "Call back example-customer",
        "nps": 0.0,
        "rule": "detractor_callback",
    }
    assert SECRET not in done.stdout + done.stderr

    receiver.status = 400  # refused: not retried, reported
    refused = run_cli(["actions", "test", "detractor_callback"], env, timeout=60)
    assert refused.returncode == 1 and "not delivered (http_400)" in refused.stderr
    assert len(receiver.requests) == 2

    unknown = run_cli(["actions", "test", "nope"], env, timeout=60)
    assert unknown.returncode == 1 and "(actions: detractor_callback, chat_alert)" in unknown.stderr

    missing = run_cli(["actions", "test", "detractor_callback"], env | {"JW_ACTION_SECRETS": "{}"})
    assert missing.returncode == 1 and "names secret 'crm'" in missing.stderr
    assert len(receiver.requests) == 2  # nothing sent without its secret

    listed = run_cli(["actions", "list"], env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("detractor_callback: when nps_below 7.0, for identified")
    assert "POST (secret chat_hook)" in listed.stdout

    receiver.status = 200  # the URL from the secret, never shown
    chat = run_cli(["actions", "test", "chat_alert"], env, timeout=60)
    assert chat.returncode == 0, chat.stderr
    assert receiver.requests[-1]["path"] == f"/hooks/T0/B0/{HOOK_KEY}"
    assert receiver.requests[-1]["body"] == {"text": "example-customer hung up"}
    assert HOOK_KEY not in chat.stdout + chat.stderr + listed.stdout


def test_a_dead_letter_is_a_row_and_goes_with_its_customer(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    apply_migrations(client, db, 30)
    letters = [
        {
            "failed_at": "2026-12-07T09:00:00.000+00:00",
            "rule": "low_csat",
            "idempotency_key": f"{oid}:low_csat",
            "output_id": oid,
            "person_id": person,
            "reason": "retries_exhausted",
            "status": 503,
            "attempts": 6,
            "answer": "down",
            "url": "https://desk.example.com/api/tickets",
            "trigger": {"type": "kpi", "name": "csat", "person_id": person, "value": 1.0},
        }
        for oid, person in (("a1", "c:jane"), ("b2", "c:bob"))
    ]
    rows = [
        action_failure_row(orjson.dumps(letter), "actions.dlq", "id", 0, n)
        for n, letter in enumerate(letters)
    ]
    rows.append(action_failure_row(b"not json", "actions.dlq", "id", 0, 2))
    client.insert(f"{db}.action_failures", rows, column_names=list(ACTION_FAILURE_COLUMNS))
    stored = client.query(
        f"SELECT person_id, reason, status, attempts, JSONExtractFloat(trigger, 'value') "
        f"FROM {db}.action_failures ORDER BY kafka_offset"
    ).result_rows
    assert [list(r) for r in stored] == [
        ["c:jane", "retries_exhausted", 503, 6, 1.0],
        ["c:bob", "retries_exhausted", 503, 6, 1.0],
        ["", "unreadable", 0, 0, 0.0],
    ]
    counts = delete_person(client, db, Person(persons={"c:jane"}))
    assert counts["action_failures"] == 1
    left = client.query(f"SELECT person_id FROM {db}.action_failures ORDER BY kafka_offset")
    assert [r[0] for r in left.result_rows] == ["c:bob", ""]


def test_actions_off_by_setting_the_agent_stays_up_idle(tmp_path: Path, broker: Any) -> None:
    """JW_ACTIONS_ENABLED=false: ready (its probes pass, it can stay deployed), reads nothing."""
    from streams.offsets import committed_offsets
    from tests.helpers import free_port, http_get, start_cli, stop_process, wait_until

    port = free_port()
    env = jw_env(
        broker_url=broker.url,
        journeys_file=journeys_file(tmp_path, 9),
        action_secrets=json.dumps({"crm": SECRET, "chat_hook": "http://127.0.0.1:9/x"}),
        actions_enabled="false",
        actions_web_port=port,
        data_dir=tmp_path / "var",
    )
    log = tmp_path / "actions.log"
    agent = start_cli(["actions", "run"], env, log)
    try:

        def ready() -> bool:
            assert agent.poll() is None, log.read_text()[-2000:]
            return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200

        wait_until(ready, 60, "the idle actions agent")
        status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b'jw_action_deliveries_total{result="delivered"' in metrics
        assert "JW_ACTIONS_ENABLED is false" in log.read_text()
        assert committed_offsets(broker.url, "journeywatch-actions") == {}
    finally:
        stop_process(agent)
