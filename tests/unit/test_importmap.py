"""Import mapping files (pipeline/importmap.py): the shipped kinds as mappings, another export's
columns and values, and bad files named by file and line."""

from __future__ import annotations

import pytest

from pipeline.contract import TouchpointEvent, validate_touchpoint
from pipeline.definitions import DefinitionError
from pipeline.feeds import RESOLVED_WRAP_UP_CODES, RowError, derived_event_id
from pipeline.importmap import map_call_leg, parse_mapping, shipped_mapping
from pipeline.pii import hash_email, hash_phone
from tests.unit.test_contract import NOW

KEY = b"k"

ZENDESK = """\
version: 1
source: import:zendesk
channel: email
id_prefix: zd
delimiter: ";"
time_format: "%d/%m/%Y %H:%M"
time_zone: Europe/London
columns:
  record: Ticket ID
  event: Update type
  timestamp: Updated at
  email: Requester email
names:
  satisfaction: Satisfaction score
  reply_minutes: First reply time (min)
attributes: [Group]
fields:
  csat: satisfaction
rules:
  - {event: Created, touchpoint: ticket.opened, action: open}
  - event: Solved
    where: {satisfaction: [1, 2]}
    touchpoint: ticket.solved
    action: resolve
    outcome: error
    outcome_reason: unhappy
  - {event: Solved, touchpoint: ticket.solved, action: resolve}
  - {event: "Reply*", touchpoint: ticket.reply, action: reply, wait: reply_minutes, wait_unit: s}
  - {event: "*", channel: chat}
"""


def test_the_shipped_kinds_are_mappings_and_keep_their_event_ids() -> None:
    """--kind contact-center and --kind store are the YAML defaults; the event ids are those
    the code they replace derived (a re-import after the upgrade deduplicates)."""
    leg = map_call_leg(
        {"call_id": " c1 ", "event": "Queued", "timestamp": "2026-11-20T10:00:00+01:00"}
        | {"customer_id": "x", "wait_seconds": "12.5", "queue": "billing"},
        KEY,
    )
    assert isinstance(leg, dict)
    assert leg["event_id"] == derived_event_id("cc", "c1", "queued", "2026-11-20T09:00:00+00:00")
    assert (leg["touchpoint"], leg["action"], leg["wait_ms"]) == ("queue.wait", "wait", 12_500)
    assert (leg["session_hint"], leg["source"], leg["attributes"]) == (
        "c1",
        "import:contact_center",
        {"queue": "billing"},
    )
    store = shipped_mapping("store").map_row(
        {"visit_id": "v1", "event": "purchase", "timestamp": "2026-11-20T12:00:00Z"}
        | {"loyalty_id": "L1", "amount": "5", "receipt_id": "r1"},
        KEY,
    )
    assert store == RowError("currency", "is required with an amount")
    store = shipped_mapping("store").map_row(
        {"visit_id": "v1", "event": "purchase", "timestamp": "2026-11-20T12:00:00Z"}
        | {"loyalty_id": "L1", "amount": "5", "currency": "eur", "receipt_id": "r1"},
        KEY,
    )
    assert isinstance(store, dict) and store["currency"] == "EUR"
    assert store["event_id"] == derived_event_id(
        "store", "v1", "purchase", "2026-11-20T12:00:00+00:00", "r1"
    )
    rule = next(r for r in shipped_mapping("contact-center").rules if r.where)
    assert set(rule.where["wrap_up_code"]) == RESOLVED_WRAP_UP_CODES  # the same as Connect's


def test_another_export_maps_with_a_file_only() -> None:
    mapping = parse_mapping(ZENDESK, "zendesk.yaml")
    base = {
        "Ticket ID": "T-7",
        "Updated at": "20/07/2026 09:30",
        "Requester email": "Ann@Example.com",
        "Group": "Billing",
    }
    opened = mapping.map_row({**base, "Update type": "created"}, KEY)
    unhappy = mapping.map_row({**base, "Update type": "Solved", "Satisfaction score": "2"}, KEY)
    happy = mapping.map_row({**base, "Update type": "Solved", "Satisfaction score": "5"}, KEY)
    reply = mapping.map_row(
        {**base, "Update type": "Reply sent", "First reply time (min)": "90"}, KEY
    )
    other = mapping.map_row({**base, "Update type": "Priority Changed"}, KEY)
    strict = parse_mapping(ZENDESK.replace('  - {event: "*", channel: chat}\n', ""), "zd.yaml")
    refused = strict.map_row({**base, "Update type": "created"}, KEY)  # case-sensitive
    assert isinstance(refused, RowError) and refused.column == "Update type"
    assert refused.problem == "'created' is not one of Created, Solved (rules of zd.yaml)"
    assert isinstance(opened, dict) and opened["touchpoint"] == "created"  # the catch-all
    for event in (unhappy, happy, reply, other):
        assert isinstance(event, dict), event
        assert isinstance(validate_touchpoint(dict(event), NOW), TouchpointEvent)
    assert isinstance(unhappy, dict) and isinstance(happy, dict)
    assert isinstance(reply, dict) and isinstance(other, dict)
    assert unhappy["occurred_at"] == "2026-07-20T08:30:00+00:00"  # BST
    assert unhappy["email_hash"] == hash_email("ann@example.com", KEY)
    assert (unhappy["outcome"], unhappy["outcome_reason"], unhappy["csat"]) == (
        "error",
        "unhappy",
        2,
    )
    assert "outcome" not in happy and happy["csat"] == 5
    assert reply["wait_ms"] == 90_000 and reply["attributes"] == {"Group": "Billing"}
    assert (other["touchpoint"], other["action"], other["channel"]) == (
        "priority.changed",
        "track",
        "chat",
    )
    assert happy["event_id"] != unhappy["event_id"] or happy["csat"] != unhappy["csat"]
    assert happy["event_id"].startswith("zd-") and happy["source"] == "import:zendesk"


def test_a_record_inherits_its_customer_and_bad_values_name_the_export_column() -> None:
    mapping = parse_mapping(ZENDESK.replace("email: Requester email", "phone: Caller"), "z.yaml")
    known: dict[str, dict[str, str]] = {}
    first = mapping.map_row(
        {"Ticket ID": "T-1", "Update type": "Created", "Updated at": "01/12/2026 10:00"}
        | {"Caller": "+44 20 7946 0958"},
        KEY,
        "",
        known,
    )
    later = mapping.map_row(
        {"Ticket ID": "T-1", "Update type": "Solved", "Updated at": "01/12/2026 11:00"},
        KEY,
        "",
        known,
    )
    assert isinstance(first, dict) and isinstance(later, dict)
    assert later["phone_hash"] == first["phone_hash"] == hash_phone("+442079460958", KEY)
    base = {"Ticket ID": "T-2", "Update type": "Solved", "Caller": "+44 20 7946 0958"}
    cases = {
        "Updated at": {**base, "Updated at": "2026-12-01"},
        "Satisfaction score": {**base, "Updated at": "01/12/2026 10:00", "Satisfaction score": "9"},
        "": {"Ticket ID": "T-3", "Update type": "Created", "Updated at": "01/12/2026 10:00"},
        "Ticket ID": {"Update type": "Created", "Updated at": "01/12/2026 10:00"},
    }
    for column, row in cases.items():
        result = mapping.map_row(row, KEY, "", known)
        assert isinstance(result, RowError) and result.column == column, (column, result)
    missing = mapping.map_row(cases[""], KEY)
    assert isinstance(missing, RowError) and missing.problem == "no identifier: give Caller"


@pytest.mark.parametrize(
    ("edit", "line", "where", "message"),
    [
        (("channel: email", "channel: fax"), 3, "channel", "Input should be"),
        (("  event: Update type\n", ""), 9, "columns.event", "Field required"),
        (("time_zone: Europe/London", "time_zone: Mars/Olympus"), 7, "time_zone", "zone name"),
        (("action: open}", "action: Open}"), 20, "rules[0].action", "String should match"),
        (("    outcome: error", "    outcome: meh"), 25, "rules[1].outcome", "Input should"),
        (('delimiter: ";"', 'delimiter: ";;"'), 5, "delimiter", "at most 1 character"),
        (("  csat: satisfaction", "  csat: satisfaction\n  colour: red"), 19, "fields.colour", ""),
        (("rules:", "rule:"), 20, "rule", "Extra inputs are not permitted"),
        (("columns:", "columns: [\n"), 11, "(yaml)", "while parsing"),
    ],
)
def test_a_bad_mapping_is_reported_by_file_and_line(
    edit: tuple[str, str], line: int, where: str, message: str
) -> None:
    text = ZENDESK.replace(*edit)
    assert text != ZENDESK
    with pytest.raises(DefinitionError) as raised:
        parse_mapping(text, "genesys.yaml")
    text_of = [str(p) for p in raised.value.problems]
    assert any(p.startswith(f"genesys.yaml:{line}: {where}: ") for p in text_of), text_of
    assert any(message in p for p in text_of), text_of
    assert str(raised.value).startswith("invalid import mapping:")
