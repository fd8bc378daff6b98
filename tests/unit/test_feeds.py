from __future__ import annotations

from decimal import Decimal

from pipeline.contract import TouchpointEvent, validate_touchpoint
from pipeline.feeds import RowError
from pipeline.importmap import map_call_leg, map_store_row
from pipeline.pii import hash_phone
from tests.unit.test_contract import NOW

KEY = b"k"


def test_call_legs_map_to_contact_centre_touchpoints_and_inherit_the_caller() -> None:
    known: dict[str, dict[str, str]] = {}
    first = map_call_leg(
        {
            "call_id": "c1",
            "event": "queued",
            "timestamp": "2026-11-20T09:00:00Z",
            "phone": "+44 20 7946 0958",
        },
        KEY,
        "",
        known,
    )
    ended = map_call_leg(
        {
            "call_id": "c1",
            "event": "ended",
            "timestamp": "2026-11-20T09:10:00+01:00",
            "wrap_up_code": "Resolved",
        },
        KEY,
        "",
        known,
    )
    abandoned = map_call_leg(
        {
            "call_id": "c2",
            "event": "abandoned",
            "timestamp": "2026-11-20T09:00:00Z",
            "customer_id": "x",
            "wait_seconds": "95.5",
        },
        KEY,
    )
    assert isinstance(first, dict) and isinstance(ended, dict) and isinstance(abandoned, dict)
    assert first["phone_hash"] == hash_phone("+442079460958", KEY) == ended["phone_hash"]
    assert "phone" not in first
    assert (ended["touchpoint"], ended["action"], ended["occurred_at"]) == (
        "agent.talk",
        "resolve",
        "2026-11-20T08:10:00+00:00",
    )
    assert (abandoned["outcome"], abandoned["wait_ms"]) == ("abandoned", 95_500)
    for event in (first, ended, abandoned):
        assert isinstance(validate_touchpoint(dict(event), NOW), TouchpointEvent)
    again = map_call_leg(
        {
            "call_id": "c1",
            "event": "queued",
            "timestamp": "2026-11-20T09:00:00Z",
            "phone": "+44 20 7946 0958",
        },
        KEY,
    )
    assert (
        isinstance(again, dict) and again["event_id"] == first["event_id"]
    )  # re-import is idempotent


def test_store_rows_map_purchases_returns_and_queues() -> None:
    base = {
        "visit_id": "v1",
        "store_id": "s9",
        "loyalty_id": "L1",
        "timestamp": "2026-11-20T12:00:00Z",
    }
    purchase = map_store_row(
        {**base, "event": "purchase", "amount": "42.50", "currency": "EUR"}, KEY
    )
    refund = map_store_row(
        {**base, "event": "return", "amount": "10", "currency": "EUR", "receipt_id": "r2"}, KEY
    )
    queue = map_store_row({**base, "event": "queue", "queue_seconds": "720"}, KEY)
    assert isinstance(purchase, dict) and isinstance(refund, dict) and isinstance(queue, dict)
    assert purchase["touchpoint"] == "till.purchase"
    assert Decimal(purchase["revenue"]) == Decimal("42.50") and purchase["currency"] == "EUR"
    assert Decimal(refund["revenue"]) == Decimal("-10")
    assert queue["wait_ms"] == 720_000 and queue["attributes"] == {"store_id": "s9"}


def test_bad_rows_name_the_column() -> None:
    cases = {
        "call_id": map_call_leg(
            {"event": "queued", "timestamp": "2026-11-20T09:00:00Z", "customer_id": "x"}, KEY
        ),
        "event": map_call_leg(
            {"call_id": "c", "event": "beamed", "timestamp": "2026-11-20T09:00:00Z"}, KEY
        ),
        "timestamp": map_store_row(
            {"visit_id": "v", "event": "visit", "timestamp": "yesterday", "loyalty_id": "L"}, KEY
        ),
        "amount": map_store_row(
            {
                "visit_id": "v",
                "event": "purchase",
                "timestamp": "2026-11-20T09:00:00Z",
                "loyalty_id": "L",
                "amount": "lots",
            },
            KEY,
        ),
        "": map_store_row(
            {"visit_id": "v", "event": "visit", "timestamp": "2026-11-20T09:00:00Z"}, KEY
        ),
    }
    for column, result in cases.items():
        assert isinstance(result, RowError) and result.column == column, (column, result)
