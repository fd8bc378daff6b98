"""The customer timeline's pure parts (sinks/clickhouse/customers.py): which identifier a
request names (raw e-mails and phones hashed, never kept) and how rows become the timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from pipeline.engine import blocked_output
from pipeline.pii import hash_email, hash_phone
from sinks.clickhouse.customers import (
    TimelineError,
    assemble,
    blocked_output_id,
    kpis,
    parse_identifier,
    person_key,
)

KEY = b"k"
T = datetime(2026, 12, 1, 9, tzinfo=UTC)


def hashers() -> dict[str, Any]:
    return {
        "hash_email": lambda v: hash_email(v, KEY),
        "hash_phone": lambda v: hash_phone(v, KEY, "44"),
    }


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("C-1042", "customer_id:C-1042"),
        ("customer_id:C-1042", "customer_id:C-1042"),
        ("c:C-1042", "customer_id:C-1042"),
        ("device_id:9f1c", "device_id:9f1c"),
        ("a:anonymous_id:x1", "anonymous_id:x1"),
        ("loyalty_id:L-1", "loyalty_id:L-1"),
        ("order:77", "customer_id:order:77"),  # not a kind: a customer id with a colon
        ("  C-1  ", "customer_id:C-1"),
    ],
)
def test_identifiers_name_their_key(given: str, key: str) -> None:
    assert parse_identifier(given, **hashers()) == key


def test_raw_emails_and_phones_are_hashed_as_the_collector_hashes_them() -> None:
    email = "email_hash:" + hash_email("jane@example.com", KEY)
    assert parse_identifier("email:Jane@Example.com ", **hashers()) == email
    assert parse_identifier("Jane@Example.com", **hashers()) == email
    phone = "phone_hash:" + hash_phone("+44 20 7946 0000", KEY, "44")
    assert parse_identifier("phone:+44 20 7946 0000", **hashers()) == phone
    assert parse_identifier("+44 (20) 7946-0000", **hashers()) == phone
    for raw in ("email:jane@example.com", "phone:+44 20 7946 0000", "jane@example.com"):
        assert "jane" not in parse_identifier(raw, **hashers())
        assert "7946" not in parse_identifier(raw, **hashers())


def test_what_names_nobody_is_refused() -> None:
    for bad in ("", "  ", "device_id:", "email:"):
        with pytest.raises(TimelineError) as refused:
            parse_identifier(bad, **hashers())
        assert refused.value.status == 400
    with pytest.raises(TimelineError) as no_key:
        parse_identifier("email:jane@example.com")
    assert no_key.value.status == 503 and "JW_PII_HASH_KEY" in str(no_key.value)


def test_person_keys_and_blocked_ids_match_the_engine() -> None:
    assert person_key("c:C1") == "customer_id:C1"
    assert person_key("a:device_id:d1") == "device_id:d1"
    assert (
        blocked_output_id("device_id:kiosk")
        == blocked_output("device_id:kiosk", 0, "c:1", "e").output_id
    )


def out(
    n: int, minutes: int, type_: str, name: str, person: str = "c:C1", **more: Any
) -> dict[str, Any]:
    detail = more.pop("detail", {})
    row = {
        "person_id": person,
        "at": T + timedelta(minutes=minutes),
        "output_id": f"o{n}",
        "type": type_,
        "name": name,
        "journey": "",
        "journey_id": "",
        "stage": "",
        "channel": "",
        "touchpoint": "",
        "event_id": "",
        "value": None,
        "detail": orjson.dumps(detail).decode(),
    }
    row.update(more)
    return row


def tp(event_id: str, minutes: int, channel: str, *identifiers: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "occurred_at": T + timedelta(minutes=minutes),
        "identifiers": list(identifiers),
        "customer_id": "",
        "channel": channel,
        "touchpoint": "x.view",
        "action": "view",
        "outcome": "ok",
        "outcome_reason": "",
        "session_hint": "",
        "duration_ms": None,
        "wait_ms": None,
        "csat": None,
        "nps": None,
        "sentiment": None,
        "revenue": None,
        "currency": "",
        "source": "",
    }


def test_rows_become_a_timeline_with_one_outcome_per_journey() -> None:
    anon = "a:anonymous_id:x"
    j = {"journey": "online_purchase", "journey_id": "j1"}
    rows = [
        out(
            1, 0, "identity", "linked", anon, event_id="e1", detail={"identifier": "anonymous_id:x"}
        ),
        out(2, 0, "journey", "started", anon, stage="awareness", channel="web", event_id="e1", **j),
        out(3, 2, "identity", "linked", event_id="e2", detail={"identifier": "customer_id:C1"}),
        out(4, 2, "identity", "merged", event_id="e2", detail={"from_person": anon}),
        out(5, 2, "journey", "stage_reached", stage="cart", channel="web", event_id="e2", **j),
        out(
            6,
            3,
            "negative_moment",
            "payment_failed",
            stage="cart",
            channel="web",
            event_id="e3",
            detail={"severity": 0.8, "moment_of_truth": "payment"},
            **j,
        ),
        out(
            7,
            3,
            "moment_of_truth",
            "payment",
            stage="cart",
            event_id="e3",
            detail={"passed": False},
            **j,
        ),
        out(8, 30, "journey", "dropped_off", stage="cart", channel="web", **j),
        out(9, 30, "score", "peak_end", value=-0.6, detail={"outcome": "dropped_off"}, **j),
        out(10, 40, "journey", "dropoff_retracted", stage="cart", detail={"retracts": "o8"}, **j),
        out(11, 40, "journey", "converted", stage="purchase", channel="store", event_id="e4", **j),
        out(12, 40, "score", "peak_end", value=0.4, detail={"outcome": "converted"}, **j),
        out(13, 40, "kpi", "csat", value=4.0, channel="store", event_id="e4"),
        out(14, 41, "kpi", "nps", value=10.0, event_id="e4"),
        out(15, 41, "kpi", "nps", value=3.0, event_id="e5"),
        out(16, 41, "kpi", "ltv_increment", value=20.5, event_id="e4", detail={"currency": "EUR"}),
        out(17, 42, "kpi", "first_contact_resolution", value=1.0),
        out(18, 43, "kpi", "complaint_response", value=120.0),
    ]
    rows.append(dict(rows[4]))  # a row written twice
    touches = [
        tp("e3", 3, "web", "customer_id:C1"),
        tp("e1", 0, "web", "anonymous_id:x"),
        tp("e2", 2, "web", "anonymous_id:x", "customer_id:C1"),
        tp("e4", 40, "store", "customer_id:C1", "loyalty_id:L"),
    ]
    timeline = assemble("customer_id:C1", "c:C1", rows, touches, {"loyalty_id:L"})
    assert [t["event_id"] for t in timeline["touchpoints"]] == ["e1", "e2", "e3", "e4"]
    assert timeline["touchpoints"][2]["negative_moments"] == ["payment_failed"]
    assert timeline["touchpoints"][2]["moments_of_truth"] == ["payment"]
    assert timeline["touchpoints"][0]["journeys"] == ["j1"]
    assert timeline["merges"] == [
        {
            "at": "2026-12-01T09:02:00.000Z",
            "from_person": anon,
            "into_person": "c:C1",
            "event_id": "e2",
            "identifiers": ["anonymous_id:x"],
        }
    ]
    assert [(i["identifier"], i["person_id"]) for i in timeline["identifiers"]] == [
        ("anonymous_id:x", anon),
        ("customer_id:C1", "c:C1"),
    ]
    [journey] = timeline["journeys"]
    assert journey["outcome"] == "converted" and journey["stage"] == "purchase"
    assert [s["stage"] for s in journey["stages"]] == ["awareness", "cart"]
    assert journey["score"] == 0.4  # the conversion's score, not the retracted drop-off's
    assert journey["started_at"] == "2026-12-01T09:00:00.000Z"
    assert journey["channels"] == ["store", "web"]
    assert [m["kind"] for m in timeline["negative_moments"]] == ["payment_failed"]
    assert timeline["negative_moments"][0]["moment_of_truth"] == "payment"
    assert timeline["moments_of_truth"][0]["passed"] is False
    k = timeline["kpis"]
    assert k["csat"] == {"answers": 1, "mean": 4.0}
    assert k["nps"] == {"answers": 2, "promoters": 1, "passives": 0, "detractors": 1, "score": 0.0}
    assert k["first_contact_resolution"]["rate"] == 1.0
    assert k["complaint_response"]["mean_s"] == 120.0
    assert k["value"] == {"purchases": 1, "revenue": 20.5, "currencies": ["EUR"]}
    assert timeline["persons"] == [anon, "c:C1"]


def test_a_journey_without_an_outcome_is_active_and_kpis_of_nothing_are_empty() -> None:
    rows = [out(1, 0, "journey", "started", stage="a", journey="j", journey_id="j1")]
    [journey] = assemble("customer_id:C1", "c:C1", rows, [])["journeys"]
    assert journey["outcome"] == "active" and journey["score"] is None
    empty = kpis([])
    assert empty["csat"]["mean"] is None and empty["nps"]["score"] is None
    assert empty["value"]["revenue"] == 0


def test_the_api_description_is_valid_and_describes_the_answer() -> None:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    from streams.openapi import customer_timeline_schema, sink_openapi_document

    validate(sink_openapi_document())
    rows = [out(1, 0, "journey", "started", stage="a", journey="j", journey_id="j1")]
    timeline = assemble("customer_id:C1", "c:C1", rows, [tp("e1", 0, "web", "customer_id:C1")])
    timeline["truncated"] = False
    Draft202012Validator(customer_timeline_schema()).validate(timeline)


def test_the_command_renders_every_section_as_a_table() -> None:
    from streams.customers import customer_path, render_text

    rows = [
        out(1, 0, "journey", "started", stage="a", journey="j", journey_id="j1"),
        out(2, 1, "negative_moment", "error", journey="j", journey_id="j1", channel="web"),
        out(3, 1, "identity", "merged", event_id="e1", detail={"from_person": "a:device_id:d"}),
    ]
    timeline = assemble(
        "customer_id:C1", "c:C1", rows, [tp("e1", 0, "web", "customer_id:C1", "device_id:d")]
    )
    text = render_text(timeline)
    for title in (
        "Identity: identifiers linked (0)",
        "Identity: merges (1)",
        "Journeys (1)",
        "Negative moments (1)",
        "Moments of truth (0)",
        "Touchpoints (1)",
    ):
        assert title in text, title
    assert "person c:C1 (customer C1)" in text and "a:device_id:d" in text
    assert customer_path("email_hash:ab") == "/api/v1/customers/email_hash:ab"
    assert customer_path("customer_id:a b/c") == "/api/v1/customers/customer_id:a%20b%2Fc"
