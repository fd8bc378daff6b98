"""`journeywatch import --kind amazon-connect` into a real broker: contact records as Kinesis
Data Firehose writes them (JSON Lines; concatenated JSON, gzip-compressed), read back from
touchpoints.raw: one contact each (a re-delivered record adds only its new steps, with the
same event ids), the right waits, the transfer in its chain, bad records named by file, line
and field while the good ones are imported."""

from __future__ import annotations

import gzip
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.connect import contact_event_id
from pipeline.pii import hash_phone
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import RAW, ensure_topics
from tests.helpers import jw_env, read_topic, run_cli

pytestmark = pytest.mark.integration

KEY = "import-key"
PHONE = "+44 20 7946 0958"
BASE = (datetime.now(UTC) - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)


def at(minutes: float) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def record(contact_id: str, **changes: Any) -> dict[str, Any]:
    """An inbound call after the contact record data model: 30 s in the flow, 7 minutes in
    the queue, 7 minutes with the agent, 90 s of after-contact work."""
    base: dict[str, Any] = {
        "AWSContactTraceRecordFormatVersion": "2017-03-10",
        "ContactId": contact_id,
        "Channel": "VOICE",
        "InitiationMethod": "INBOUND",
        "InitiationTimestamp": at(0),
        "ConnectedToSystemTimestamp": at(0.02),
        "Queue": {
            "Name": "billing",
            "EnqueueTimestamp": at(0.5),
            "DequeueTimestamp": at(7.5),
            "Duration": 420,
        },
        "Agent": {
            "ARN": "arn:aws:connect:eu-west-2:111122223333:instance/i/agent/agent-7",
            "ConnectedToAgentTimestamp": at(7.5),
            "AfterContactWorkStartTimestamp": at(14.5),
            "AfterContactWorkEndTimestamp": at(16),
            "AfterContactWorkDuration": 90,
        },
        "CustomerEndpoint": {"Address": PHONE, "Type": "TELEPHONE_NUMBER"},
        "DisconnectTimestamp": at(14.5),
        "DisconnectReason": "CUSTOMER_DISCONNECT",
        "LastUpdateTimestamp": at(16.1),
        "Attributes": {"issue": "billing", "callback_note": f"call back on {PHONE}"},
    }
    base.update(changes)
    return base


def lines(*records: dict[str, Any] | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


def test_contact_records_import_as_one_contact_each_with_their_waits(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    answered = record("c-1")
    redelivered = record(
        "c-1",
        LastUpdateTimestamp=at(30),
        Attributes={"issue": "billing", "resolution": "resolved"},
    )
    abandoned = record(
        "c-2",
        Agent=None,
        Queue={"Name": "billing", "EnqueueTimestamp": at(0.5), "Duration": 720},
        DisconnectTimestamp=at(12.5),
    )
    transferred_from = record(
        "c-3",
        NextContactId="c-4",
        TransferCompletedTimestamp=at(12),
        DisconnectTimestamp=at(12),
        DisconnectReason="AGENT_DISCONNECT",
        CustomerEndpoint={"Address": "+44 20 7946 0959", "Type": "TELEPHONE_NUMBER"},
    )
    transferred_to = record(
        "c-4",
        InitialContactId="c-3",
        PreviousContactId="c-3",
        InitiationMethod="TRANSFER",
        InitiationTimestamp=at(12),
        Queue={"Name": "tier-2", "EnqueueTimestamp": at(12), "DequeueTimestamp": at(13)},
        Agent={
            "ARN": "arn:aws:connect:eu-west-2:111122223333:instance/i/agent/agent-9",
            "ConnectedToAgentTimestamp": at(13),
        },
        DisconnectTimestamp=at(20),
        CustomerEndpoint={"Address": "+44 20 7946 0959", "Type": "TELEPHONE_NUMBER"},
    )
    path = tmp_path / "connect-ctr-2026-12-05-09.jsonl"
    path.write_bytes(
        lines(
            answered,
            abandoned,
            b"{not json",
            record("c-5", InitiationTimestamp="yesterday"),
            transferred_from,
            record("c-6", Channel="CHAT"),
            answered,  # delivered twice (at least once)
            transferred_to,
            redelivered,  # again, later, with the resolution recorded after the call
        )
    )
    env = jw_env(broker_url=broker.url, pii_hash_key=KEY)
    result = run_cli(["import", "--kind", "amazon-connect", str(path)], env)
    assert result.returncode == 0, result.stderr
    # c-1: 5 + 5 + 6 (the re-delivery: the same 5 and its resolution); c-2: 2; c-3: 5; c-4: 4
    assert "27 events imported, 3 lines rejected" in result.stdout, result.stdout + result.stderr
    assert f"{path}:3: not valid JSON" in result.stderr
    assert f"{path}:4: InitiationTimestamp: 'yesterday' is not an ISO 8601 time" in result.stderr
    assert f"{path}:6: Channel: 'CHAT' contacts are not imported" in result.stderr

    raw = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)]
    assert len(raw) == 27
    assert all(b"7946" not in orjson.dumps(r) for r in raw)  # hashed, or redacted in free text
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in raw:
        by_id[event["event_id"]].append(event)
    # Deduplicated on event_id (as the pipeline does): one contact each, one event per step.
    contacts: dict[str, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for copies in by_id.values():
        first = copies[0]
        step = (first["touchpoint"], first["action"])
        assert step not in contacts[first["attributes"]["contact_id"]]
        contacts[first["attributes"]["contact_id"]][step] = first
    assert set(contacts) == {"c-1", "c-2", "c-3", "c-4"}
    assert len(by_id) == 6 + 2 + 5 + 4
    assert [len(by_id[contact_event_id("c-1", s)]) for s in ("queue", "resolution")] == [3, 1]

    c1 = contacts["c-1"]
    assert set(c1) == {
        ("ivr.menu", "select"),
        ("queue.wait", "wait"),
        ("agent.talk", "talk"),
        ("agent.talk", "end"),
        ("agent.talk", "resolve"),
        ("call.wrap_up", "wrap_up"),
    }
    assert c1[("ivr.menu", "select")]["duration_ms"] == 30_000
    assert c1[("queue.wait", "wait")]["wait_ms"] == 420_000
    assert c1[("agent.talk", "talk")]["duration_ms"] == 420_000
    assert c1[("call.wrap_up", "wrap_up")]["duration_ms"] == 90_000
    assert {e["phone_hash"] for e in c1.values()} == {hash_phone(PHONE, KEY.encode())}
    assert {e["session_hint"] for e in c1.values()} == {"c-1"}
    note = c1[("ivr.menu", "select")]["attributes"]["callback_note"]
    assert note == "call back on [redacted-phone]"

    (queue,) = [e for e in contacts["c-2"].values() if e["touchpoint"] == "queue.wait"]
    assert (queue["outcome"], queue["outcome_reason"], queue["wait_ms"]) == (
        "abandoned",
        "caller_hung_up",
        720_000,
    )

    chain = list(contacts["c-3"].values()) + list(contacts["c-4"].values())
    assert {e["session_hint"] for e in chain} == {"c-3"}  # one contact of the customer
    assert ("agent.talk", "transfer") in contacts["c-4"]
    assert contacts["c-4"][("queue.wait", "wait")]["wait_ms"] == 60_000
    assert contacts["c-3"][("queue.wait", "wait")]["outcome"] == "ok"


def test_concatenated_records_in_a_gzip_object_as_firehose_writes_without_a_delimiter(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    path = tmp_path / "connect-ctr-1-2026-12-05-09-00-00-abc.gz"
    body = b"".join(orjson.dumps(record(f"g-{n}")) for n in range(3))
    path.write_bytes(gzip.compress(body))
    env = jw_env(broker_url=broker.url, pii_hash_key=KEY)
    result = run_cli(["import", "--kind", "amazon-connect", str(path)], env)
    assert result.returncode == 0, result.stderr
    assert "15 events imported, 0 lines rejected" in result.stdout, result.stdout
    raw = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)]
    assert sorted({e["attributes"]["contact_id"] for e in raw}) == ["g-0", "g-1", "g-2"]
    assert sorted(e["wait_ms"] for e in raw if "wait_ms" in e) == [420_000] * 3
