"""Amazon Connect contact records (contact trace records) as touchpoint events.

Pure: a parsed contact record in, the touchpoint events of its contact out (the importer,
``streams/importer.py``, scrubs, validates and produces them). The mapping is documented in
docs/sources/amazon-connect.md.

Amazon Connect delivers a contact's record at least once, and again with a later
``LastUpdateTimestamp`` when something is added to it (contact attributes updated after the
call, after-contact work ended). Every touchpoint's ``event_id`` is derived from the
``ContactId`` and the step alone (never from a time or a value that a re-delivery may change),
so a re-delivered record gives the same events, which the pipeline deduplicates on
``event_id``: one contact, never two. A step is emitted only once it is settled (the queue wait
once the contact has left the queue), and a later record that adds steps the earlier lacked
(the resolution recorded in an attribute after the call) adds those events; a step already sent
is not revised.

A transfer or a callback makes a new contact record that names the first one of its chain
(``InitialContactId``, else ``PreviousContactId``): its touchpoints carry the chain's first
contact id as ``session_hint``, so the chain is one contact of the customer (one session), not
a repeat contact, and first-contact resolution counts it once. The agent transfer itself is a
``transfer`` negative moment (``agent.talk`` / ``transfer``), as in the call-leg CSV.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from pipeline.feeds import RESOLVED_WRAP_UP_CODES, RowError
from pipeline.pii import hash_email, hash_phone

SOURCE: Final = "import:amazon_connect"
MAX_DURATION_MS: Final = 7 * 24 * 3600 * 1000  # the event contract's bound on wait and duration
_ONE_MS: Final = timedelta(milliseconds=1)

# Contact attributes that name the customer (the first one set wins), besides the phone
# number of CustomerEndpoint.Address. They become identifiers, not attributes.
CUSTOMER_ID_ATTRIBUTES: Final = ("customer_id", "customerId", "CustomerId", "customerID")
LOYALTY_ID_ATTRIBUTES: Final = ("loyalty_id", "loyaltyId", "LoyaltyId")
EMAIL_ATTRIBUTES: Final = ("email", "Email", "customer_email")
# Contact attributes where a flow or the agent's desktop records how the contact ended: one of
# RESOLVED_WRAP_UP_CODES (resolved, fixed, answered_question) there is the goal of the
# support_case journey (an agent.talk / resolve touchpoint), as wrap_up_code is in the CSV.
RESOLUTION_ATTRIBUTES: Final = ("resolution", "disposition", "wrap_up_code")
# Contact attributes kept on each touchpoint: at most this many (by name), names of at most
# 64 characters, strings cut to MAX_ATTRIBUTE_CHARS. The event contract allows 64 attributes;
# the rest are the importer's own (contact_id, queue, agent_id, ...).
MAX_CONTACT_ATTRIBUTES: Final = 48
MAX_ATTRIBUTE_CHARS: Final = 512
# InitiationMethod values that are not a contact with the customer: a supervisor listening
# in, an agent dialling a third party. Their records give no touchpoint.
NOT_A_CUSTOMER_CONTACT: Final = frozenset({"MONITOR", "EXTERNAL_OUTBOUND"})

# step → (touchpoint, action): the names the default journeys (pipeline/defaults) and the
# call-leg CSV (pipeline/feeds.py, CALL_EVENTS) use.
STEPS: Final[dict[str, tuple[str, str]]] = {
    "initiation": ("ivr.menu", "select"),
    "transfer": ("agent.talk", "transfer"),
    "queue": ("queue.wait", "wait"),
    "agent": ("agent.talk", "talk"),
    "disconnect": ("agent.talk", "end"),
    "resolution": ("agent.talk", "resolve"),
    "after_contact_work": ("call.wrap_up", "wrap_up"),
}


class _Bad(Exception):
    def __init__(self, column: str, problem: str) -> None:
        super().__init__(problem)
        self.error = RowError(column, problem)


@dataclass
class ContactChains:
    """What one import has learnt of contact chains (transfers, callbacks): contact id → the
    first contact of its chain, and first contact → its customer's identifiers (a contact of
    the chain whose record names no customer inherits them)."""

    first_of: dict[str, str] = field(default_factory=dict)
    customers: dict[str, dict[str, str]] = field(default_factory=dict)


def contact_event_id(contact_id: str, step: str) -> str:
    """The event id of one step of one contact: the same for every delivery of its record."""
    digest = hashlib.blake2b(f"connect|{contact_id}|{step}".encode(), digest_size=16)
    return f"connect-{digest.hexdigest()}"


def _object(record: Mapping[str, Any], name: str, path: str = "") -> Mapping[str, Any] | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _Bad(path + name, f"must be an object, not {type(value).__name__}")
    return value


def _text(record: Mapping[str, Any], name: str, path: str = "") -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(path + name, f"must be a string, not {type(value).__name__}")
    return value.strip() or None


def _time(record: Mapping[str, Any], name: str, path: str = "") -> datetime | None:
    raw = _text(record, name, path)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if value.tzinfo is None:
            raise _Bad(path + name, f"{raw!r} has no time zone")
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Bad(path + name, f"{raw!r} is not an ISO 8601 time") from None


def _seconds(record: Mapping[str, Any], name: str, path: str = "") -> int | None:
    """A duration in whole seconds (the record's ``...Duration`` fields), as milliseconds."""
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(path + name, f"{value!r} is not a number of seconds")
    if not 0 <= value * 1000 <= MAX_DURATION_MS:
        raise _Bad(path + name, f"{value!r} s is not between 0 and 7 days")
    return int(value * 1000)


def _between(start: datetime, end: datetime, end_field: str, start_field: str) -> int:
    ms = round((end - start).total_seconds() * 1000)
    if ms < 0:
        raise _Bad(end_field, f"is before {start_field}")
    if ms > MAX_DURATION_MS:
        raise _Bad(end_field, f"is more than 7 days after {start_field}")
    return ms


def _attribute_value(value: Any) -> str | int | float | bool | None:
    if isinstance(value, str):
        return value[:MAX_ATTRIBUTE_CHARS]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)[:MAX_ATTRIBUTE_CHARS]
    if isinstance(value, float) and math.isfinite(value) and abs(value) < 2.0**63:
        return value
    return None  # a list, an object, null, NaN: not an attribute value


def _identity(
    attributes: Mapping[str, Any], endpoint: Mapping[str, Any] | None, key: bytes, country: str
) -> dict[str, str]:
    ids: dict[str, str] = {}
    for kind, names in (
        ("customer_id", CUSTOMER_ID_ATTRIBUTES),
        ("loyalty_id", LOYALTY_ID_ATTRIBUTES),
    ):
        for name in names:
            value = attributes.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
                ids[kind] = str(value).strip()
                break
    for name in EMAIL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str) and "@" in value:
            ids["email_hash"] = hash_email(value, key)
            break
    if endpoint is not None:
        endpoint_type = _text(endpoint, "Type", "CustomerEndpoint.")
        address = _text(endpoint, "Address", "CustomerEndpoint.")
        # A withheld number ("anonymous", a few digits) is no identifier: not an error.
        digits = sum(ch.isdigit() for ch in address or "")
        if address and endpoint_type in (None, "TELEPHONE_NUMBER") and digits >= 6:
            ids["phone_hash"] = hash_phone(address, key, country)
    return ids


def _attributes(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The contact attributes kept on its touchpoints (bounded; free text is scrubbed of
    e-mail addresses and phone numbers by the importer, as for every import)."""
    identity = {*CUSTOMER_ID_ATTRIBUTES, *LOYALTY_ID_ATTRIBUTES, *EMAIL_ATTRIBUTES}
    kept: dict[str, Any] = {}
    dropped = 0
    for name in sorted(k for k in raw if isinstance(k, str)):
        if name in identity:
            continue
        value = _attribute_value(raw[name])
        if value is None or not name or len(name) > 64 or len(kept) >= MAX_CONTACT_ATTRIBUTES:
            dropped += 1
            continue
        kept[name] = value
    if dropped:
        kept["attributes_dropped"] = dropped
    return kept


def map_contact_record(
    record: Mapping[str, Any],
    pii_key: bytes,
    country_code: str = "",
    chains: ContactChains | None = None,
) -> list[dict[str, Any]] | RowError:
    """The touchpoint events of one contact record (a dict in the contact record data model),
    in time order, or a :class:`RowError` naming the field (``Queue.EnqueueTimestamp``) and the
    problem. Never raises. ``chains``: what the import has seen of contact chains so far."""
    try:
        return _map(
            record, pii_key, country_code, chains if chains is not None else ContactChains()
        )
    except _Bad as bad:
        return bad.error


def _map(
    record: Mapping[str, Any], key: bytes, country: str, chains: ContactChains
) -> list[dict[str, Any]]:
    contact_id = _text(record, "ContactId")
    if contact_id is None:
        raise _Bad("ContactId", "is required")
    channel = _text(record, "Channel") or "VOICE"
    if channel != "VOICE":
        raise _Bad("Channel", f"{channel!r} contacts are not imported: only VOICE (call_center)")
    method = _text(record, "InitiationMethod") or "INBOUND"
    initiated = _time(record, "InitiationTimestamp")
    if initiated is None:
        raise _Bad("InitiationTimestamp", "is required")
    queue = _object(record, "Queue")
    agent = _object(record, "Agent")
    raw_attributes = _object(record, "Attributes") or {}
    disconnected = _time(record, "DisconnectTimestamp")
    enqueued = _time(queue, "EnqueueTimestamp", "Queue.") if queue else None
    dequeued = _time(queue, "DequeueTimestamp", "Queue.") if queue else None
    queue_ms = _seconds(queue, "Duration", "Queue.") if queue else None
    queue_name = _text(queue, "Name", "Queue.") if queue else None
    connected = _time(agent, "ConnectedToAgentTimestamp", "Agent.") if agent else None
    acw_start = _time(agent, "AfterContactWorkStartTimestamp", "Agent.") if agent else None
    acw_end = _time(agent, "AfterContactWorkEndTimestamp", "Agent.") if agent else None
    acw_ms = _seconds(agent, "AfterContactWorkDuration", "Agent.") if agent else None
    agent_arn = _text(agent, "ARN", "Agent.") if agent else None
    next_contact = _text(record, "NextContactId")
    transferred_on = _time(record, "TransferCompletedTimestamp")
    reason = _text(record, "DisconnectReason")
    initial = _text(record, "InitialContactId")
    previous = _text(record, "PreviousContactId")
    _time(record, "LastUpdateTimestamp")  # checked, not used: steps are never revised
    if method in NOT_A_CUSTOMER_CONTACT:
        return []

    first = initial or (chains.first_of.get(previous) if previous else None) or previous
    first = first or contact_id
    chains.first_of[contact_id] = first
    ids = _identity(raw_attributes, _object(record, "CustomerEndpoint"), key, country)
    if ids:
        chains.customers.setdefault(first, ids)
    else:
        ids = chains.customers.get(first, {})
    if not ids:
        raise _Bad(
            "CustomerEndpoint.Address",
            "no customer: a caller's phone number, or a customer_id, loyalty_id or email "
            "contact attribute",
        )

    attributes = _attributes(raw_attributes)
    attributes["contact_id"] = contact_id
    attributes["initiation_method"] = method.lower()
    if queue_name:
        attributes["queue"] = queue_name
    if agent_arn:
        attributes["agent_id"] = agent_arn.rsplit("/", 1)[-1]
    if reason:
        attributes["disconnect_reason"] = reason.lower()

    events: list[tuple[datetime, dict[str, Any]]] = []

    def step(name: str, at: datetime, **fields: Any) -> None:
        touchpoint, action = STEPS[name]
        event: dict[str, Any] = {
            "event_id": contact_event_id(contact_id, name),
            "occurred_at": at.isoformat(),
            "channel": "call_center",
            "touchpoint": touchpoint,
            "action": action,
            "outcome": "ok",
            "session_hint": first,
            "source": SOURCE,
            **ids,
            **{k: v for k, v in fields.items() if v is not None},
            "attributes": dict(attributes),
        }
        events.append((at, event))

    # The contact flow (IVR) of an inbound call: until it is queued, answered or hung up.
    if method == "INBOUND":
        spent = None
        for name, left_flow in (
            ("Queue.EnqueueTimestamp", enqueued),
            ("Agent.ConnectedToAgentTimestamp", connected),
            ("DisconnectTimestamp", disconnected),
        ):
            if left_flow is not None:
                spent = _between(initiated, left_flow, name, "InitiationTimestamp")
                break
        step("initiation", initiated, duration_ms=spent)
    elif method == "TRANSFER":  # an agent transferred the caller (to an agent or a queue)
        step("transfer", initiated)

    # The queue: settled once the caller left it (answered, moved on, or hung up).
    if enqueued is not None:
        moved_on = connected is not None or next_contact is not None or transferred_on is not None
        abandoned = not moved_on and disconnected is not None
        left, left_field = next(
            (
                (time, name)
                for time, name in (
                    (dequeued, "Queue.DequeueTimestamp"),
                    (connected, "Agent.ConnectedToAgentTimestamp"),
                    (disconnected if abandoned else None, "DisconnectTimestamp"),
                )
                if time is not None
            ),
            (None, ""),
        )
        if queue_ms is not None or left is not None:
            if queue_ms is None:
                assert left is not None
                queue_ms = _between(enqueued, left, left_field, "Queue.EnqueueTimestamp")
            fields: dict[str, Any] = {"wait_ms": queue_ms}
            if abandoned:
                fields["outcome"] = "abandoned"
                fields["outcome_reason"] = _abandon_reason(reason)
            step("queue", enqueued, **fields)

    # The agent: connected, then the end of the call, the resolution, the after-contact work.
    if connected is not None:
        talk = (
            _between(
                connected, disconnected, "DisconnectTimestamp", "Agent.ConnectedToAgentTimestamp"
            )
            if disconnected
            else None
        )
        step("agent", connected, duration_ms=talk)
        if disconnected is not None:
            step("disconnect", disconnected)
            if _resolved(raw_attributes):
                # 1 ms after the end of the call: the engine orders touchpoints of the same
                # millisecond by event id, and an agent.talk after the resolution would open
                # a new support case.
                step("resolution", disconnected + _ONE_MS)
    if acw_start is not None:
        if acw_ms is None and acw_end is not None:
            acw_ms = _between(
                acw_start,
                acw_end,
                "Agent.AfterContactWorkEndTimestamp",
                "Agent.AfterContactWorkStartTimestamp",
            )
        step("after_contact_work", acw_start, duration_ms=acw_ms)
    events.sort(key=lambda item: item[0])
    return [event for _, event in events]


def _abandon_reason(reason: str | None) -> str:
    """CUSTOMER_DISCONNECT (or none given): ``caller_hung_up``, as in the call-leg CSV; else
    the DisconnectReason as a slug (``contact_flow_disconnect``, ``telecom_problem``)."""
    if reason is None or reason == "CUSTOMER_DISCONNECT":
        return "caller_hung_up"
    slug = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in reason.lower())[:64]
    return slug if slug[:1].isalpha() else "disconnected"


def _resolved(attributes: Mapping[str, Any]) -> bool:
    for name in RESOLUTION_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str) and value.strip().lower() in RESOLVED_WRAP_UP_CODES:
            return True
    return False


# -- the files Kinesis Data Firehose writes -------------------------------------------------

_DECODER: Final = json.JSONDecoder()
_SPACE: Final = " \t\r\n\ufeff"
_NOT_PARSED: Final = object()


def iter_documents(text: str) -> Iterator[tuple[int, Any, int]]:
    """The JSON documents of a contact-record file: (line, document or a problem as ``str``,
    characters read so far).

    Firehose writes the records it receives one after the other, with no separator unless
    the delivery stream adds a newline (its ``AppendDelimiterToRecord`` processor). So a file
    may be JSON Lines, concatenated JSON objects (``{...}{...}``, on one line or pretty-printed
    over many), or a JSON array of records: each element of a top-level array is a document.
    After a malformed document the scan resumes at the next line, or at the next ``}{`` on the
    same line, and the problem is reported with the line it starts on."""
    pos = 0
    line = 1
    counted = 0  # newlines are counted up to here
    end = len(text)
    in_array = False
    at_line_start = True
    while True:
        while pos < end and (text[pos] in _SPACE or (in_array and text[pos] == ",")):
            pos += 1
        if pos >= end:
            if in_array:
                yield _line(text, counted, pos, line), "the JSON array is not closed", pos
            return
        crossed = text.count("\n", counted, pos)
        line += crossed
        counted = pos
        at_line_start = at_line_start or crossed > 0
        if not in_array and text[pos] == "[":
            in_array = True
            pos += 1
            continue
        if in_array and text[pos] == "]":
            in_array = False
            pos += 1
            continue
        eol = text.find("\n", pos)
        eol = end if eol < 0 else eol
        value: Any = _NOT_PARSED
        if at_line_start:
            # The common case, JSON Lines: the document is the rest of the line. (Only at
            # the start of a line: on a long line of concatenated records, trying the rest
            # of the line at every record would cost the square of its length.)
            try:
                value = orjson.loads(text[pos:eol])
                next_pos = eol
            except orjson.JSONDecodeError:
                pass
        if value is _NOT_PARSED:
            try:
                value, next_pos = _DECODER.raw_decode(text, pos)
            except (json.JSONDecodeError, RecursionError) as exc:
                problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
                yield line, f"not valid JSON: {problem}", pos
                pos = _resume(text, pos, eol)
                at_line_start = pos == eol
                continue
        yield line, _record_or_problem(value), next_pos
        pos = next_pos
        at_line_start = False


def _line(text: str, counted: int, pos: int, line: int) -> int:
    return line + text.count("\n", counted, pos)


def _resume(text: str, pos: int, eol: int) -> int:
    joint = text.find("}{", pos, eol)
    return joint + 1 if joint >= 0 else eol


def _record_or_problem(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    return f"expected a JSON object (a contact record), got {type(value).__name__}"
