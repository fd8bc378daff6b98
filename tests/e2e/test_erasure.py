"""Erasing one customer while the pipeline runs (docs/operations/erasure.md), against the real
collector, worker and sink on a real broker with chdb: a customer's cross-channel history
(an anonymous visit, then signed in with an e-mail address, then a call with a phone number)
and another customer's go through the pipeline into ClickHouse; the erase API refuses
anonymous (401) and read-only (403) callers; ``journeywatch erase --customer --api`` (the
admin token) erases; then no row of any table holds any of the customer's identifiers or
person ids, the audit row holds none either, the other customer's rows are unchanged, a
second erasure finds nothing, and a worker restarted afterwards does not bring the customer
back: a later event with the erased e-mail address starts a new person."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.pii import hash_email, hash_phone
from streams.broker import EmbeddedBroker
from tests.e2e.stack import Topology, clock_events
from tests.e2e.test_web_auth import call
from tests.helpers import WEB_ADMIN_TOKEN, WEB_READ_TOKEN, run_cli, wait_until

pytestmark = pytest.mark.e2e

KEY = b"test-key"  # the Topology's JW_PII_HASH_KEY
JANE = "jane-e2e-7"
EMAIL = "Jane.E2E@example.com"
PHONE = "+44 20 7946 0123"
DEVICE = "dev-jane-e2e"
BOB = "bob-e2e-3"
TABLES = (
    "touchpoints",
    "journey_events",
    "experience_moments",
    "journeys",
    "failed_events",
    "journey_errors",
    "identity_merges",
)


def _event(at: int, touchpoint: str, channel: str = "web", **ids: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.fromtimestamp(at / 1000, UTC).isoformat(),
        "channel": channel,
        "touchpoint": touchpoint,
        "action": "view",
        "source": "test",
        **ids,
    }


def _sql(topology: Topology, query: str) -> list[list[Any]]:
    answer = call(
        topology.status_port,
        "POST",
        "/api/v1/sql",
        headers={"Authorization": f"Bearer {WEB_READ_TOKEN}", "Content-Type": "text/plain"},
        body=query.encode(),
    )
    assert answer.status == 200, answer.body
    return list(answer.json()["rows"])


def _table_text(topology: Topology) -> dict[str, str]:
    """Each table's rows as text, in a fixed order (``SELECT *`` gives no order: two reads of
    the same rows could differ, and the settling below then never saw two reads agree)."""
    return {
        t: "\n".join(sorted(orjson.dumps(r).decode() for r in _sql(topology, f"SELECT * FROM {t}")))
        for t in TABLES
    }


def _settled(topology: Topology) -> dict[str, str]:
    """Every table's rows once they stop changing (the sink writes in batches)."""
    seen = [_table_text(topology)]

    def unchanged() -> bool:
        time.sleep(1.0)
        seen.append(_table_text(topology))
        return seen[-1] == seen[-2]

    wait_until(unchanged, 60, "ClickHouse to settle", 0.1)
    return seen[-1]


@pytest.fixture()
def topology(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Topology]:
    running = Topology(broker, tmp_path, allowed_lateness_s=1, log_level="INFO")
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def test_a_customer_is_erased_everywhere_and_comes_back_as_a_new_person(
    topology: Topology,
) -> None:
    now = int(datetime.now(UTC).timestamp() * 1000)
    at = now - 600_000
    history = [
        _event(at, "home.view", device_id=DEVICE),  # anonymous first
        _event(at + 1_000, "product.view", customer_id=JANE, device_id=DEVICE, email=EMAIL),
        _event(at + 2_000, "support.call", "call_center", customer_id=JANE, phone=PHONE),
        _event(at + 500, "home.view", customer_id=BOB, device_id="dev-bob-e2e"),
        _event(at + 1_500, "product.view", customer_id=BOB, device_id="dev-bob-e2e"),
    ]
    for event in history:  # one at a time: the anonymous visit reaches its worker first
        assert topology.post([event]) == 202
    assert topology.post(clock_events(at + 60_000)) == 202
    email_hash, phone_hash = hash_email(EMAIL, KEY), hash_phone(PHONE, KEY)
    jane_words = [JANE, DEVICE, email_hash, phone_hash]

    def stored() -> bool:
        persons = {r[0] for r in _sql(topology, "SELECT DISTINCT person_id FROM journey_events")}
        merges = _sql(topology, "SELECT count() FROM identity_merges")
        touches = _sql(topology, "SELECT count() FROM touchpoints")
        return {f"c:{JANE}", f"c:{BOB}"} <= persons and merges[0][0] >= 1 and touches[0][0] >= 9

    wait_until(stored, 60, "both customers' journeys in ClickHouse", 0.5)
    before = _settled(topology)
    assert all(w in before["touchpoints"] for w in jane_words)
    assert f"a:device_id:{DEVICE}" in before["identity_merges"]
    bob_before = {t: text.count(BOB) for t, text in before.items()}

    # the API wants the admin role
    path = f"/api/v1/customers/{JANE}/erase"
    assert call(topology.status_port, "POST", path).status == 401
    read = {"Authorization": f"Bearer {WEB_READ_TOKEN}"}
    assert call(topology.status_port, "POST", path, headers=read).status == 403

    api = f"http://127.0.0.1:{topology.status_port}"
    result = run_cli(["erase", "--customer", JANE, "--api", api], topology.env)
    assert result.returncode == 0, result.stderr
    record = orjson.loads(result.stdout)
    assert record["requested_by"] == "api admin (token)"
    assert record["partitions_told"] == 4 and record["identifiers"] >= 4
    assert record["rows_deleted"]["touchpoints"] == 3
    assert not [w for w in jane_words if w in result.stdout]

    after = _table_text(topology)
    assert not [(t, w) for t, text in after.items() for w in jane_words if w in text]
    assert f"a:device_id:{DEVICE}" not in after["journey_events"]
    assert {t: text.count(BOB) for t, text in after.items()} == bob_before
    audit = orjson.dumps(_sql(topology, "SELECT * FROM erasures")).decode()
    assert record["erasure_id"] in audit
    assert not [w for w in [*jane_words, EMAIL.lower(), "jane"] if w in audit.lower()]

    # again, through the API with the admin token: nothing left
    admin = {"Authorization": f"Bearer {WEB_ADMIN_TOKEN}"}
    again = call(topology.status_port, "POST", path, headers=admin)
    assert again.status == 200, again.body
    assert set(again.json()["rows_deleted"].values()) == {0}

    # a worker restarted from its saved state does not bring her back
    topology.retire(0)
    topology.start(0)
    wait_until(lambda: topology.ready(0), 90, "the restarted worker")
    later = _event(now - 60_000, "home.view", email=EMAIL)
    assert topology.post([later]) == 202
    assert topology.post(clock_events(now)) == 202

    def later_stored() -> list[list[Any]]:
        return _sql(
            topology,
            f"SELECT DISTINCT person_id FROM journey_events WHERE event_id = '{later['event_id']}'",
        )

    # (applied to a person brought back, it would start no journey: it would join hers)
    wait_until(lambda: bool(later_stored()), 60, "the later event to start a journey", 0.5)
    assert later_stored() == [[f"a:email_hash:{email_hash}"]]  # a new person
    # the sink stored the later touchpoint too (the control records did not stop it)
    query = f"SELECT email_hash FROM touchpoints WHERE event_id = '{later['event_id']}'"
    wait_until(lambda: bool(_sql(topology, query)), 30, "the later touchpoint stored", 0.5)
    assert not _sql(topology, f"SELECT 1 FROM journey_events WHERE person_id = 'c:{JANE}'")
    logs = "".join(p.read_text() for p in topology.tmp.glob("*.log"))
    assert "erasure applied" in logs  # (the worker's)
    assert record["erasure_id"] in logs and "Logging error" not in logs  # (the sink's audit)
    assert "did not confirm" not in logs  # the workers and the sink applied it first
    assert "Crashed" not in logs  # (the sink's agents skip the control records)
    assert not [w for w in [JANE, email_hash, phone_hash] if w in logs]
