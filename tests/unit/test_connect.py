"""Amazon Connect contact records → touchpoints (pipeline/connect.py).

The records follow the contact record data model of the Amazon Connect administrator guide
("Data model for Amazon Connect contact records"): ContactId, InitialContactId,
PreviousContactId, NextContactId, Channel, InitiationMethod, InitiationTimestamp,
ConnectedToSystemTimestamp, Queue {Name, ARN, EnqueueTimestamp, DequeueTimestamp, Duration},
Agent {ARN, ConnectedToAgentTimestamp, AfterContactWork{Start,End}Timestamp,
AfterContactWorkDuration}, CustomerEndpoint {Address, Type}, DisconnectTimestamp,
DisconnectReason, TransferCompletedTimestamp, LastUpdateTimestamp, Attributes.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.connect import (
    ContactChains,
    contact_event_id,
    iter_documents,
    map_contact_record,
)
from pipeline.contract import TouchpointEvent, validate_touchpoint
from pipeline.engine import JourneyEngine, Output
from pipeline.feeds import RowError
from pipeline.importmap import map_call_leg
from pipeline.pii import hash_phone
from pipeline.touch import Touch
from tests.unit.journeys import CATALOG

KEY = b"connect-test-key"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
PHONE = "+44 20 7946 0958"
AGENT = "arn:aws:connect:eu-west-2:111122223333:instance/abcd/agent/agent-7"
QUEUE = "arn:aws:connect:eu-west-2:111122223333:instance/abcd/queue/q-1"


def answered(contact_id: str = "c-1", day: int = 20, **extra: Any) -> dict[str, Any]:
    """An inbound call: 30 s in the flow, 7 minutes in the queue, 7 minutes with the agent,
    90 s of after-contact work."""
    record: dict[str, Any] = {
        "AWSContactTraceRecordFormatVersion": "2017-03-10",
        "ContactId": contact_id,
        "InitialContactId": None,
        "PreviousContactId": None,
        "NextContactId": None,
        "Channel": "VOICE",
        "InitiationMethod": "INBOUND",
        "InitiationTimestamp": f"2026-11-{day}T09:00:00Z",
        "ConnectedToSystemTimestamp": f"2026-11-{day}T09:00:01Z",
        "Queue": {
            "ARN": QUEUE,
            "Name": "billing",
            "EnqueueTimestamp": f"2026-11-{day}T09:00:30Z",
            "DequeueTimestamp": f"2026-11-{day}T09:07:30Z",
            "Duration": 420,
        },
        "Agent": {
            "ARN": AGENT,
            "Username": "jdoe",
            "ConnectedToAgentTimestamp": f"2026-11-{day}T09:07:30Z",
            "AgentInteractionDuration": 420,
            "AfterContactWorkStartTimestamp": f"2026-11-{day}T09:14:30Z",
            "AfterContactWorkEndTimestamp": f"2026-11-{day}T09:16:00Z",
            "AfterContactWorkDuration": 90,
        },
        "CustomerEndpoint": {"Address": PHONE, "Type": "TELEPHONE_NUMBER"},
        "SystemEndpoint": {"Address": "+442070000000", "Type": "TELEPHONE_NUMBER"},
        "DisconnectTimestamp": f"2026-11-{day}T09:14:30Z",
        "DisconnectReason": "CUSTOMER_DISCONNECT",
        "LastUpdateTimestamp": f"2026-11-{day}T09:16:05Z",
        "Attributes": {"issue": "billing", "language": "en-GB"},
    }
    record.update(extra)
    return record


def events_of(record: dict[str, Any], chains: ContactChains | None = None) -> list[dict[str, Any]]:
    mapped = map_contact_record(record, KEY, "", chains)
    assert not isinstance(mapped, RowError), mapped
    return mapped


def steps(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["touchpoint"], e["action"], e["outcome"]) for e in events]


def valid(events: list[dict[str, Any]]) -> list[TouchpointEvent]:
    out = []
    for event in events:
        result = validate_touchpoint(copy.deepcopy(event), NOW)
        assert isinstance(result, TouchpointEvent), result
        out.append(result)
    return out


def run_engine(events: list[dict[str, Any]]) -> list[Output]:
    engine = JourneyEngine(CATALOG)
    out: list[Output] = []
    for event in sorted(valid(events), key=lambda e: e.occurred_at):
        out += engine.submit(Touch.from_event(event))
    out += engine.advance(2**62)
    return out


def named(outputs: list[Output], type_: str, name: str) -> list[Output]:
    return [o for o in outputs if o.type == type_ and o.name == name]


def test_an_answered_call_becomes_flow_queue_agent_end_and_wrap_up_with_their_waits() -> None:
    events = events_of(answered())
    assert steps(events) == [
        ("ivr.menu", "select", "ok"),
        ("queue.wait", "wait", "ok"),
        ("agent.talk", "talk", "ok"),
        ("agent.talk", "end", "ok"),
        ("call.wrap_up", "wrap_up", "ok"),
    ]
    ivr, queue, talk, end, wrap_up = events
    assert end["occurred_at"] == "2026-11-20T09:14:30+00:00" and "duration_ms" not in end
    assert ivr["occurred_at"] == "2026-11-20T09:00:00+00:00" and ivr["duration_ms"] == 30_000
    assert queue["wait_ms"] == 420_000 and "duration_ms" not in queue
    assert talk["duration_ms"] == 420_000
    assert wrap_up["duration_ms"] == 90_000
    for event in events:
        assert event["channel"] == "call_center" and event["session_hint"] == "c-1"
        assert event["phone_hash"] == hash_phone(PHONE, KEY)
        assert event["attributes"]["queue"] == "billing"
        assert event["attributes"]["agent_id"] == "agent-7"
        assert event["attributes"]["issue"] == "billing"
        assert event["source"] == "import:amazon_connect"
    assert all(PHONE not in str(e) and "7946" not in str(e) for e in events)
    assert len({e["event_id"] for e in events}) == 5
    valid(events)


def test_the_queue_wait_comes_from_the_timestamps_when_duration_is_missing() -> None:
    record = answered()
    del record["Queue"]["Duration"]
    assert events_of(record)[1]["wait_ms"] == 420_000


def test_a_contact_abandoned_in_the_queue_is_one_abandoned_queue_wait() -> None:
    record = answered(
        "c-2",
        Agent=None,
        Queue={
            "ARN": QUEUE,
            "Name": "billing",
            "EnqueueTimestamp": "2026-11-20T09:00:30Z",
            "DequeueTimestamp": "2026-11-20T09:12:30Z",
            "Duration": 720,
        },
        DisconnectTimestamp="2026-11-20T09:12:30Z",
    )
    events = events_of(record)
    assert steps(events) == [("ivr.menu", "select", "ok"), ("queue.wait", "wait", "abandoned")]
    queue = events[1]
    assert (queue["wait_ms"], queue["outcome_reason"]) == (720_000, "caller_hung_up")
    # Without Dequeue or Duration: from the enqueue to the hang-up; another reason, as a slug.
    del record["Queue"]["Duration"], record["Queue"]["DequeueTimestamp"]
    record["DisconnectReason"] = "TELECOM_PROBLEM"
    queue = events_of(record)[1]
    assert (queue["wait_ms"], queue["outcome_reason"]) == (720_000, "telecom_problem")
    out = run_engine(events)
    assert len(named(out, "negative_moment", "call_abandoned")) == 1
    assert len(named(out, "negative_moment", "long_wait")) == 1  # 12 minutes > 10
    assert [o.stage for o in named(out, "journey", "dropped_off")] == ["diagnosis"]


def test_a_call_that_left_the_queue_for_another_contact_is_not_abandoned() -> None:
    record = answered("c-3", Agent=None, NextContactId="c-4")
    queue = events_of(record)[1]
    assert queue["outcome"] == "ok" and queue["wait_ms"] == 420_000


def test_a_redelivered_record_gives_the_same_events_and_only_adds_the_new_steps() -> None:
    """Delivered when the call ended (no after-contact work yet, no resolution), then again
    with a later LastUpdateTimestamp once the agent recorded the resolution (an
    update-contact-attributes) and the after-contact work ended."""
    first = answered("c-5", LastUpdateTimestamp="2026-11-20T09:14:35Z")
    first["Agent"] = {
        "ARN": AGENT,
        "ConnectedToAgentTimestamp": "2026-11-20T09:07:30Z",
    }
    later = answered("c-5", LastUpdateTimestamp="2026-11-20T09:30:00Z")
    later["Attributes"] = {**later["Attributes"], "resolution": "Resolved"}
    again = copy.deepcopy(first)  # the same delivery twice (at least once)
    delivered = [events_of(first), events_of(again), events_of(later)]
    ids = [[e["event_id"] for e in events] for events in delivered]
    assert ids[0] == ids[1]
    assert set(ids[0]) < set(ids[2])
    new = [e for e in delivered[2] if e["event_id"] not in ids[0]]
    assert sorted(steps(new)) == [
        ("agent.talk", "resolve", "ok"),
        ("call.wrap_up", "wrap_up", "ok"),
    ]
    assert {e["event_id"] for e in new} == {
        contact_event_id("c-5", "resolution"),
        contact_event_id("c-5", "after_contact_work"),
    }
    # Everything delivered, through the engine (which drops repeated event ids): one contact,
    # one journey, converted on the resolution that came with the re-delivery.
    out = run_engine([e for events in delivered for e in events])
    assert len(named(out, "journey", "started")) == 1
    assert len(named(out, "journey", "converted")) == 1
    assert [o.value for o in named(out, "kpi", "first_contact_resolution")] == [1.0]
    assert not named(out, "negative_moment", "repeat_contact")


def transfer_chain() -> list[dict[str, Any]]:
    """c-10 answered by agent 7, who transfers the caller (TRANSFER, via a queue) to agent 9:
    contact c-11, PreviousContactId c-10, which resolves the problem."""
    first = answered(
        "c-10",
        NextContactId="c-11",
        TransferCompletedTimestamp="2026-11-20T09:12:00Z",
        DisconnectTimestamp="2026-11-20T09:12:00Z",
        DisconnectReason="AGENT_DISCONNECT",
    )
    del first["Agent"]["AfterContactWorkStartTimestamp"]
    del first["Agent"]["AfterContactWorkEndTimestamp"]
    del first["Agent"]["AfterContactWorkDuration"]
    second = answered(
        "c-11",
        InitialContactId="c-10",
        PreviousContactId="c-10",
        InitiationMethod="TRANSFER",
        InitiationTimestamp="2026-11-20T09:12:00Z",
        Queue={
            "ARN": QUEUE,
            "Name": "billing-tier-2",
            "EnqueueTimestamp": "2026-11-20T09:12:00Z",
            "DequeueTimestamp": "2026-11-20T09:13:00Z",
            "Duration": 60,
        },
        Agent={
            "ARN": AGENT.replace("agent-7", "agent-9"),
            "ConnectedToAgentTimestamp": "2026-11-20T09:13:00Z",
        },
        DisconnectTimestamp="2026-11-20T09:20:00Z",
        Attributes={"issue": "billing", "disposition": "fixed"},
    )
    return [first, second]


def test_a_transferred_contact_continues_its_chain_and_resolves_on_first_contact() -> None:
    chains = ContactChains()
    first, second = (events_of(record, chains) for record in transfer_chain())
    assert {e["session_hint"] for e in first + second} == {"c-10"}
    assert steps(second)[0] == ("agent.talk", "transfer", "ok")
    assert second[1]["wait_ms"] == 60_000
    out = run_engine(first + second)
    assert [o.value for o in named(out, "kpi", "first_contact_resolution")] == [1.0]
    assert len(named(out, "negative_moment", "transfer")) == 1
    assert not named(out, "negative_moment", "repeat_contact")
    # Only PreviousContactId (no InitialContactId), the first record seen earlier in the
    # import: the chain is still found; without either, it is a contact of its own.
    record = transfer_chain()[1]
    record["InitialContactId"] = None
    chains = ContactChains()
    events_of(answered("c-10"), chains)
    assert {e["session_hint"] for e in events_of(record, chains)} == {"c-10"}
    record["PreviousContactId"] = None
    assert {e["session_hint"] for e in events_of(record)} == {"c-11"}


def test_a_new_contact_days_later_is_a_repeat_contact_and_no_first_contact_resolution() -> None:
    first = answered("c-20")
    second = answered("c-21", day=22, Attributes={"issue": "billing", "resolution": "resolved"})
    out = run_engine(events_of(first) + events_of(second))
    assert [o.value for o in named(out, "kpi", "first_contact_resolution")] == [0.0]
    assert len(named(out, "negative_moment", "repeat_contact")) == 1


def test_a_contact_drives_support_case_as_the_same_call_in_the_csv_does() -> None:
    record = answered("k1", Attributes={"issue": "billing", "wrap_up_code": "resolved"})
    csv_rows = [
        ("ivr", "2026-11-20T09:00:00Z", {"phone": PHONE, "queue": "billing"}),
        ("queued", "2026-11-20T09:00:30Z", {"queue": "billing", "wait_seconds": "420"}),
        ("answered", "2026-11-20T09:07:30Z", {}),
        ("ended", "2026-11-20T09:14:30Z", {"wrap_up_code": "resolved"}),
        ("wrap_up", "2026-11-20T09:14:30Z", {}),
    ]
    known: dict[str, dict[str, str]] = {}
    csv_events = []
    for event, at, extra in csv_rows:
        mapped = map_call_leg(
            {"call_id": "k1", "event": event, "timestamp": at, **extra}, KEY, "", known
        )
        assert isinstance(mapped, dict), mapped
        csv_events.append(mapped)

    def summary(out: list[Output]) -> list[tuple[str, str, str | None]]:
        keep = {"journey", "kpi", "negative_moment", "moment_of_truth"}
        return sorted((o.type, o.name, o.stage) for o in out if o.type in keep)

    connect_out = run_engine(events_of(record))
    assert summary(connect_out) == summary(run_engine(csv_events))
    assert [o.value for o in named(connect_out, "kpi", "first_contact_resolution")] == [1.0]


def test_a_contact_attribute_can_name_the_customer_and_a_transfer_inherits_it() -> None:
    chains = ContactChains()
    record = answered(
        "c-30",
        CustomerEndpoint={"Address": "anonymous", "Type": "TELEPHONE_NUMBER"},
        Attributes={"customerId": "CRM-42", "email": "ann@example.com", "note": "x"},
    )
    first = events_of(record, chains)
    assert first[0]["customer_id"] == "CRM-42" and "email_hash" in first[0]
    assert "phone_hash" not in first[0]
    assert set(first[0]["attributes"]) >= {"note", "contact_id"}
    assert "customerId" not in first[0]["attributes"] and "email" not in first[0]["attributes"]
    transfer = transfer_chain()[1]
    transfer.update(InitialContactId="c-30", CustomerEndpoint=None, Attributes={})
    assert events_of(transfer, chains)[0]["customer_id"] == "CRM-42"


def test_attributes_are_bounded() -> None:
    attributes: dict[str, Any] = {f"a{n:03}": "v" * 2000 for n in range(100)}
    attributes["x" * 65] = "long name"
    attributes["nested"] = {"a": 1}
    kept = events_of(answered(Attributes=attributes))[0]["attributes"]
    assert len(kept) <= 64
    assert kept["attributes_dropped"] == 100 - 48 + 2
    assert all(len(v) <= 512 for v in kept.values() if isinstance(v, str))
    valid(events_of(answered(Attributes=attributes)))


def test_monitor_and_other_channels() -> None:
    assert events_of(answered(InitiationMethod="MONITOR")) == []
    chat = map_contact_record(answered(Channel="CHAT"), KEY)
    assert isinstance(chat, RowError) and chat.column == "Channel"


def test_bad_records_name_the_field() -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"ContactId": None}, "ContactId", "is required"),
        ({"InitiationTimestamp": "yesterday"}, "InitiationTimestamp", "is not an ISO 8601"),
        ({"InitiationTimestamp": "2026-11-20T09:00:00"}, "InitiationTimestamp", "no time zone"),
        ({"Queue": "billing"}, "Queue", "must be an object"),
        ({"Queue": {"EnqueueTimestamp": 5}}, "Queue.EnqueueTimestamp", "must be a string"),
        ({"Agent": {"AfterContactWorkDuration": "90"}}, "Agent.AfterContactWorkDuration", ""),
        ({"DisconnectTimestamp": "2026-11-20T08:00:00Z"}, "DisconnectTimestamp", "is before"),
        ({"CustomerEndpoint": None, "Attributes": {}}, "CustomerEndpoint.Address", "no customer"),
    ]
    for change, column, problem in cases:
        result = map_contact_record(answered(**change), KEY)
        assert isinstance(result, RowError), change
        assert result.column == column and problem in result.problem, (change, result)


def test_firehose_files_json_lines_concatenated_or_an_array() -> None:
    text = (
        '{"ContactId": "a"}\n'
        '{"ContactId": "b"}{"ContactId": "c"}\n'
        "[\n"
        '  {"ContactId": "d"},\n'
        '  {"ContactId": "e"}\n'
        "]\n"
        "{\n"
        '  "ContactId": "f"\n'
        "}\n"
        "not json\n"
        '{"ContactId": "g"}{oops}{"ContactId": "h"}\n'
        "42\n"
    )
    found = [(line, doc) for line, doc, _ in iter_documents(text)]
    records = [(line, doc["ContactId"]) for line, doc in found if isinstance(doc, dict)]
    assert records == [
        (1, "a"),
        (2, "b"),
        (2, "c"),
        (4, "d"),
        (5, "e"),
        (7, "f"),
        (11, "g"),
        (11, "h"),
    ]
    problems = [(line, doc.split(":")[0]) for line, doc in found if isinstance(doc, str)]
    assert problems == [
        (10, "not valid JSON"),
        (11, "not valid JSON"),
        (12, "expected a JSON object (a contact record), got int"),
    ]
    assert list(iter_documents("")) == [] and list(iter_documents("\n \n")) == []
    assert [doc for _, doc, _ in iter_documents('[{"ContactId": "a"}')] == [
        {"ContactId": "a"},
        "the JSON array is not closed",
    ]


# -- properties ----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
).map(lambda t: t.isoformat().replace("+00:00", "Z"))
_maybe_time = st.none() | _times | st.text(max_size=12) | st.integers()
_field_names = [
    "ContactId",
    "InitialContactId",
    "PreviousContactId",
    "NextContactId",
    "Channel",
    "InitiationMethod",
    "InitiationTimestamp",
    "DisconnectTimestamp",
    "DisconnectReason",
    "LastUpdateTimestamp",
    "TransferCompletedTimestamp",
]


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """Records near the data model: its fields, with values of the right kind or not."""
    record: dict[str, Any] = {}
    for name in _field_names:
        if draw(st.booleans()):
            record[name] = draw(
                _maybe_time
                if name.endswith("Timestamp")
                else st.sampled_from(["c-1", "VOICE", "CHAT", "INBOUND", "TRANSFER", "MONITOR"])
                | _json
            )
    for name, keys in (
        ("Queue", ["Name", "EnqueueTimestamp", "DequeueTimestamp", "Duration"]),
        (
            "Agent",
            [
                "ARN",
                "ConnectedToAgentTimestamp",
                "AfterContactWorkStartTimestamp",
                "AfterContactWorkEndTimestamp",
                "AfterContactWorkDuration",
            ],
        ),
        ("CustomerEndpoint", ["Address", "Type"]),
    ):
        if draw(st.booleans()):
            record[name] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        key: (
                            _maybe_time
                            if key.endswith("Timestamp")
                            else st.integers(-5, 10**12)
                            | st.floats()
                            | st.text(max_size=16)
                            | _json
                        )
                        for key in keys
                    },
                )
                | _json
            )
    if draw(st.booleans()):
        record["Attributes"] = draw(
            st.dictionaries(st.text(max_size=70), _json, max_size=6) | _json
        )
    return record


@settings(max_examples=400, deadline=None)
@given(records())
def test_the_mapping_never_raises_and_what_it_maps_is_valid_or_refused_by_field(
    record: dict[str, Any],
) -> None:
    result = map_contact_record(record, KEY, "44", ContactChains())
    if isinstance(result, RowError):
        return
    for event in result:
        checked = validate_touchpoint(copy.deepcopy(event), NOW)
        # The contract refuses what the mapping passes through unchecked, never with a crash:
        # an identifier over 128 characters, a time beyond the 5-minute future skew.
        assert isinstance(checked, TouchpointEvent) or checked.field in (
            "customer_id",
            "loyalty_id",
            "occurred_at",
            "session_hint",
        ), checked


@settings(max_examples=200, deadline=None)
@given(
    contact=st.text(min_size=1, max_size=40).filter(str.strip),
    later=_times,
    attributes=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    drop=st.sets(st.sampled_from(["Agent", "Queue", "DisconnectTimestamp"])),
)
def test_event_ids_are_stable_across_redeliveries(
    contact: str, later: str, attributes: dict[str, str], drop: set[str]
) -> None:
    """A re-delivery (a later LastUpdateTimestamp, changed attributes, more steps) gives every
    step the earlier delivery had the same event id."""
    earlier = answered(contact.strip())
    for name in drop:
        earlier[name] = None
    redelivered = answered(contact.strip(), LastUpdateTimestamp=later)
    redelivered["Attributes"] = {**attributes, "issue": "billing"}
    before = map_contact_record(earlier, KEY)
    after = map_contact_record(redelivered, KEY)
    assert not isinstance(before, RowError) and not isinstance(after, RowError)
    ids_before = {(e["touchpoint"], e["action"]): e["event_id"] for e in before}
    ids_after = {(e["touchpoint"], e["action"]): e["event_id"] for e in after}
    # (an abandoned queue wait and an answered one are the same step: the same id)
    assert {k: ids_after[k] for k in ids_before if k in ids_after} == {
        k: v for k, v in ids_before.items() if k in ids_after
    }
    assert {e["event_id"] for e in before} <= {e["event_id"] for e in after}


# (integers within 64 bits: beyond them the JSON Lines path, orjson, reads a number as a float,
# as most JSON readers do; nothing downstream holds a wider integer)
_records_list = st.lists(
    st.dictionaries(
        st.text(max_size=6),
        st.text(max_size=6) | st.integers(min_value=-(2**63), max_value=2**63 - 1),
        max_size=3,
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(_records_list, st.sampled_from(["lines", "concatenated", "array", "pretty"]))
def test_every_form_firehose_writes_reads_back_the_same_records(
    items: list[dict[str, Any]], form: str
) -> None:
    if form == "lines":
        text = "".join(json.dumps(r) + "\n" for r in items)
    elif form == "concatenated":
        text = "".join(json.dumps(r) for r in items)
    elif form == "array":
        text = json.dumps(items)
    else:
        text = "".join(json.dumps(r, indent=2) + "\n" for r in items)
    assert [doc for _, doc, _ in iter_documents(text)] == items


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]",:\n 0a\\', max_size=40) | st.text(max_size=40))
def test_reading_any_text_never_raises(text: str) -> None:
    for line, doc, read in iter_documents(text):
        assert 1 <= line <= text.count("\n") + 1 and 0 <= read <= len(text)
        assert isinstance(doc, dict | str)
