"""`journeywatch import` into a real broker: exact counts, malformed lines reported, not fatal."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import orjson
import pytest

from pipeline.pii import hash_email, hash_phone
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.importer import end_backfill, import_file
from streams.topics import RAW, ensure_topics
from tests.helpers import jw_env, read_topic, run_cli

pytestmark = pytest.mark.integration

CALLS = """call_id,event,timestamp,customer_id,phone,queue,wait_seconds,wrap_up_code,csat
k1,ivr,2026-11-20T09:00:00Z,c1,+44 20 7946 0958,billing,,,
k1,queued,2026-11-20T09:00:30Z,,,billing,,,
k1,answered,2026-11-20T09:07:30Z,,,billing,420,,
k1,ended,2026-11-20T09:15:00Z,,,billing,,resolved,
k1,csat,2026-11-20T09:16:00Z,,,,,,5
k2,queued,2026-11-20T10:00:00,c2,,,,,
k3,teleported,2026-11-20T10:00:00Z,c3,,,,,
k4,csat,2026-11-20T10:00:00Z,c4,,,,,9
k5,queued,2026-11-20T10:00:00Z,c5,,,,,,extra
k6,abandoned,2026-11-20T11:00:00Z,c6,,,,,
"""
VISIT = {
    "visit_id": "v1",
    "store_id": "s1",
    "timestamp": "2026-11-20T12:00:00Z",
    "loyalty_id": "L1",
}
STORE = (
    b"\n".join(
        [
            orjson.dumps({**VISIT, "event": "visit"}),
            orjson.dumps({**VISIT, "event": "purchase", "amount": "19.99", "currency": "EUR"}),
            b"not json at all",
            b"[1, 2]",
            b"",
            orjson.dumps({"visit_id": "v2", "event": "visit", "timestamp": "2026-11-20T12:00:00Z"}),
        ]
    )
    + b"\n"
)


def run_import(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(["import", *args], env)


def test_import_reports_bad_lines_by_file_and_line_and_produces_exactly_the_good_ones(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    calls, store = tmp_path / "calls.csv", tmp_path / "store.jsonl"
    calls.write_text(CALLS)
    store.write_bytes(STORE)
    env = jw_env(broker_url=broker.url, pii_hash_key="import-key")
    report = tmp_path / "errors.txt"

    result = run_import(["--kind", "contact-center", str(calls), "--errors-out", str(report)], env)
    assert result.returncode == 0, result.stderr
    assert "6 events imported, 4 lines rejected" in result.stdout
    errors = report.read_text().splitlines()
    assert [line.split(": ", 1)[0] for line in errors] == [f"{calls}:{n}" for n in (7, 8, 9, 10)]
    assert "has no time zone" in errors[0] and "teleported" in errors[1] and "csat" in errors[2]
    assert "10 fields, the header has 9" in errors[3]

    result = run_import(["--kind", "store", str(store)], env)
    assert result.returncode == 0, result.stderr
    assert "2 events imported, 3 lines rejected" in result.stdout
    assert (
        f"{store}:3: not valid JSON" in result.stderr
        and f"{store}:4: expected a JSON object" in result.stderr
    )
    assert f"{store}:6: no identifier" in result.stderr

    records = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)]
    assert len(records) == 8
    assert sum(r["channel"] == "call_center" for r in records) == 6
    assert all(b"7946" not in orjson.dumps(r) for r in records)
    # The same files again: the same event ids (deduplicated downstream).
    run_import(["--kind", "store", str(store)], env)
    again = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)][8:]
    assert {r["event_id"] for r in again} == {
        r["event_id"] for r in records if r["channel"] == "store"
    }


def test_a_file_with_no_good_line_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("call_id,event,timestamp\nx,nope,2026-11-20T09:00:00Z\n")
    result = run_import(
        ["--kind", "contact-center", "--dry-run", str(bad)], jw_env(pii_hash_key="k")
    )
    assert result.returncode == 1 and "0 events valid, 1 lines rejected" in result.stdout


def test_a_row_older_than_the_retention_is_refused_by_file_and_line(tmp_path: Path) -> None:
    calls = tmp_path / "calls.csv"
    calls.write_text(
        "call_id,event,timestamp,customer_id\n"
        "k1,queued,2024-01-01T09:00:00Z,c1\n"
        "k2,queued,1970-01-01T00:00:00Z,c2\n"
        f"k3,queued,{(datetime.now(UTC) - timedelta(days=29)).isoformat()},c3\n"
    )
    env = jw_env(pii_hash_key="k", touchpoint_retention_days="30")
    result = run_import(["--kind", "contact-center", "--dry-run", str(calls)], env)
    assert "1 events valid, 2 lines rejected" in result.stdout, result.stdout + result.stderr
    for line in (2, 3):
        assert f"{calls}:{line}: too_old (field occurred_at)" in result.stderr
    assert f"{calls}:4" not in result.stderr


def test_touchpoints_in_the_contract_import_as_the_collector_takes_them(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """``--kind touchpoints``: JSON Lines in the event contract (an export of another tool
    already mapped, a backfill): e-mail and phone hashed with the key, the contract checked by
    file, line and field, the rest produced."""
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    at = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    good = {"event_id": "t1", "occurred_at": at, "channel": "store", "touchpoint": "store.visit"}
    lines = [
        orjson.dumps({**good, "action": "enter", "email": "Ann@Example.com", "source": "pos"}),
        orjson.dumps(
            {
                **good,
                "event_id": "t2",
                "action": "enter",
                "channel": "fax",
                "phone": "+44 20 7946 0958",
            }
        ),
        orjson.dumps({**good, "event_id": "t3", "action": "enter", "email": "no-at-sign"}),
        orjson.dumps({**good, "event_id": "t4", "action": "pay", "loyalty_id": "L1"}),
    ]
    path = tmp_path / "backfill.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    env = jw_env(broker_url=broker.url, pii_hash_key="import-key")
    result = run_import(["--kind", "touchpoints", str(path)], env)
    assert result.returncode == 0, result.stderr
    assert "2 events imported, 2 lines rejected" in result.stdout, result.stdout
    assert f"{path}:2: invalid_field (field channel)" in result.stderr, result.stderr
    assert f"{path}:3: email: must be an e-mail address" in result.stderr
    records = {
        r["event_id"]: r for r in (orjson.loads(x.value) for x in read_topic(broker.url, RAW))
    }
    assert set(records) == {"t1", "t4"}
    assert "email" not in records["t1"] and len(records["t1"]["email_hash"]) >= 16
    assert b"example.com" not in orjson.dumps(records["t1"]).lower()
    assert (records["t1"]["source"], records["t4"]["source"]) == ("pos", "import")


def test_the_end_of_a_backfill_waits_for_the_workers_and_says_so_when_none_runs(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """``--end-of-backfill`` moves the workers' event time only after they have ingested the
    import; with no worker consuming, it fails naming what to check, the events produced."""
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    at = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    path = tmp_path / "history.jsonl"
    path.write_bytes(
        orjson.dumps(
            {
                "event_id": "h1",
                "occurred_at": at,
                "channel": "web",
                "touchpoint": "home.view",
                "action": "view",
                "device_id": "d1",
            }
        )
        + b"\n"
    )
    env = jw_env(broker_url=broker.url, pii_hash_key="import-key")
    settings = Settings(broker_url=broker.url, pii_hash_key="import-key", partitions=2)
    report = import_file(path, "touchpoints", settings, progress=False)
    assert report.imported == 1 and sum(1 for _ in report.offsets) == 1
    with pytest.raises(click.ClickException, match="journeywatch worker` processes running"):
        end_backfill(settings, report.offsets, timeout_s=1.0, progress=False)
    assert [orjson.loads(r.value)["event_id"] for r in read_topic(broker.url, RAW)] == ["h1"]
    result = run_import(["--kind", "touchpoints", "--dry-run", "--end-of-backfill", str(path)], env)
    assert result.returncode == 0 and "end of backfill" not in result.stdout  # a dry run: no


def test_emails_and_phone_numbers_in_free_text_are_redacted_or_hashed_at_import(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """As at the collector (JW_FREE_TEXT_PII): a contact-centre export whose issue column and
    call id hold an address and a number, and touchpoints whose attributes do; with ``hash``,
    the keyed hashes of the identifier fields. An error line quotes neither."""
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    email, phone = "Jane.Doe@Example.com", "+44 20 7946 0958"
    calls = tmp_path / "calls.csv"
    calls.write_text(
        "call_id,event,timestamp,customer_id,issue\n"
        f'k1,queued,2026-11-20T09:00:00Z,c1,"refund to {email}, call {phone}, ORD-2026-000123"\n'
        f"{email},queued,2026-11-20T09:00:00Z,c2,\n"
        f"k3,queued,{email},c3,\n"
    )
    at = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    touchpoints = tmp_path / "touchpoints.jsonl"
    touchpoints.write_bytes(
        orjson.dumps(
            {
                "event_id": "t1",
                "occurred_at": at,
                "channel": "chat",
                "touchpoint": "chat.message",
                "action": "send",
                "customer_id": "c4",
                "attributes": {"text": f"mail {email} or ring 020 7946 0958", "n": 1},
            }
        )
        + b"\n"
    )
    key = "import-key"
    result = run_import(
        ["--kind", "contact-center", str(calls)], jw_env(broker_url=broker.url, pii_hash_key=key)
    )
    assert "2 events imported, 1 lines rejected" in result.stdout, result.stdout + result.stderr
    assert f"{calls}:4: timestamp: '[redacted-email]' is not an ISO 8601 time" in result.stderr
    env = jw_env(broker_url=broker.url, pii_hash_key=key, free_text_pii="hash")
    result = run_import(["--kind", "touchpoints", str(touchpoints)], env)
    assert "1 events imported, 0 lines rejected" in result.stdout, result.stdout + result.stderr

    records = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)]
    assert len(records) == 3
    for record in records:
        text = orjson.dumps(record).lower()
        assert b"example.com" not in text and b"7946" not in text
    by_customer = {r["customer_id"]: r for r in records}
    assert by_customer["c1"]["attributes"]["issue"] == (
        "refund to [redacted-email], call [redacted-phone], ORD-2026-000123"
    )
    assert by_customer["c2"]["session_hint"] == "[redacted-email]"
    assert by_customer["c4"]["attributes"] == {
        "text": f"mail [email:{hash_email(email, key.encode())}] or ring "
        f"[phone:{hash_phone('020 7946 0958', key.encode())}]",
        "n": 1,
    }


# The calls of CALLS (its six good rows) as another contact-centre tool exports them: other
# column names, other event values, ';' between fields, local times without a zone.
GENESYS = """\
Conversation ID;Segment;Start (local);Customer;ANI;Queue Name;Queue Seconds;Disposition;\
Survey
k1;IVR;20/11/2026 09:00:00;c1;+44 20 7946 0958;billing;;;
k1;Queued;20/11/2026 09:00:30;;;billing;;;
k1;Connected;20/11/2026 09:07:30;;;billing;420;;
k1;Disconnected;20/11/2026 09:15:00;;;billing;;Resolved;
k1;Survey;20/11/2026 09:16:00;;;;;;5
k6;Abandon;20/11/2026 11:00:00;c6;;;;;
k7;Callback;20/11/2026 11:00:00;c7;;;;;
"""
GENESYS_MAPPING = """\
version: 1
source: import:genesys
channel: call_center
id_prefix: gen
delimiter: ";"
time_format: "%d/%m/%Y %H:%M:%S"
time_zone: Europe/London
match_case: false
columns:
  record: Conversation ID
  event: Segment
  timestamp: Start (local)
  customer_id: Customer
  phone: ANI
names:
  queue: Queue Name
  queue_seconds: Queue Seconds
  wrap_up_code: Disposition
  survey: Survey
attributes: [queue, wrap_up_code]
fields:
  wait: queue_seconds
  csat: survey
rules:
  - {event: IVR, touchpoint: ivr.menu, action: select}
  - {event: Queued, touchpoint: queue.wait, action: wait}
  - {event: Connected, touchpoint: agent.talk, action: talk}
  - event: Disconnected
    where: {wrap_up_code: resolved}
    touchpoint: agent.talk
    action: resolve
  - {event: Disconnected, touchpoint: agent.talk, action: end}
  - {event: Survey, touchpoint: survey.csat, action: answer}
  - event: Abandon
    touchpoint: queue.wait
    action: wait
    outcome: abandoned
    outcome_reason: caller_hung_up
"""


def test_another_export_imports_with_only_a_mapping_file(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """``journeywatch import --mapping FILE``: a contact-centre export with its own columns,
    values, delimiter and local times gives the touchpoints the shipped contact-centre import
    gives for the same calls; a value no rule maps, a header without a mapped column and a
    bad mapping file are reported by file and line."""
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    env = jw_env(broker_url=broker.url, pii_hash_key="import-key")
    calls, export, mapping = tmp_path / "calls.csv", tmp_path / "genesys.csv", tmp_path / "g.yaml"
    calls.write_text(CALLS)
    export.write_text(GENESYS)
    mapping.write_text(GENESYS_MAPPING)

    result = run_import(["--mapping", str(mapping), str(export)], env)
    assert result.returncode == 0, result.stderr
    assert "6 events imported, 1 lines rejected" in result.stdout, result.stdout + result.stderr
    assert f"{export}:8: Segment: 'Callback' is not one of IVR, Queued," in result.stderr
    mapped = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)]
    assert run_import(["--kind", "contact-center", str(calls)], env).returncode == 0
    shipped = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)][len(mapped) :]

    def comparable(records: list[dict[str, object]]) -> list[dict[str, object]]:
        drop = {"event_id", "source", "received_at"}
        out = [{k: v for k, v in r.items() if k not in drop} for r in records]
        for r in out:  # the export writes its disposition "Resolved", CALLS "resolved"
            attributes = r.get("attributes")
            if isinstance(attributes, dict):
                r["attributes"] = {k: str(v).lower() for k, v in attributes.items()}
        return sorted(out, key=lambda r: (str(r["occurred_at"]), str(r["touchpoint"])))

    assert len(mapped) == len(shipped) == 6
    assert comparable(mapped) == comparable(shipped)
    assert {r["source"] for r in mapped} == {"import:genesys"}
    assert all(str(r["event_id"]).startswith("gen-") for r in mapped)
    resolved = [r for r in mapped if r["action"] == "resolve"]
    assert len(resolved) == 1 and resolved[0]["attributes"]["wrap_up_code"] == "Resolved"

    renamed = tmp_path / "renamed.csv"
    renamed.write_text(GENESYS.replace("Start (local)", "Started"))
    result = run_import(["--mapping", str(mapping), "--dry-run", str(renamed)], env)
    assert result.returncode == 1
    assert (
        f"{renamed}:1: the header has no column 'Start (local)' (the columns of {mapping})"
        in result.stderr
    ), result.stderr

    typo = tmp_path / "typo.yaml"
    typo.write_text(GENESYS_MAPPING.replace("survey: Survey", "survey: Surveys"))
    result = run_import(["--mapping", str(typo), "--dry-run", str(export)], env)
    assert result.returncode == 1
    assert f"{export}:1: the header has no column 'Surveys' (the columns of {typo})" in (
        result.stderr
    ), result.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(GENESYS_MAPPING.replace("action: talk}", "action: Talk}"))
    result = run_import(["--mapping", str(bad), "--dry-run", str(export)], env)
    assert result.returncode == 1 and "invalid import mapping:" in result.stderr
    assert f"{bad}:27: rules[2].action: String should match pattern" in result.stderr
    result = run_import(["--mapping", str(mapping), "--kind", "store", str(export)], env)
    assert result.returncode == 2 and "give --kind or --mapping" in result.stderr
