"""One codec for everything a worker saves or sends to another worker.

What crosses a process boundary, each a typed record here with a version tag and a decoder that
reads every earlier version (docs/streaming-topology.md, "Records and messages: one codec"):

* **Hand-off messages** (``journeys.handoff``, pipeline/shard.py): ``Forward``, ``Link``,
  ``Redirect``, ``Handoff`` and ``Frontier``. A JSON object, ``"kind"`` first and the version
  ``"v"`` last. Version 1 is the layout of the released code (tests/golden/released-*), which
  wrote no ``"v"``: a message without one is version 1. The released decoder reads a message's
  keys by name and ignores the others, so it reads what this codec writes (``"v"``, and the
  touches' ``received`` beside them, are keys it does not know).
* **State records** (RocksDB and the changelog, keys ``p:<person>``, ``i:<identifier>``,
  ``o:<sequence>`` and ``d:<sequence>``): ``PersonRecord``, ``IdentifierRecord``,
  ``OutboxRecord`` (a hand-off message saved with the state that decided it, before it is sent)
  and ``FinishedRecord`` (input records whose effects a step saved); the last two written only
  once every worker reads them: not with ``JW_STATE_WRITE_VERSION=1``. A JSON array of three
  items, then the version as a fourth; three items (the released code's, and everything saved
  before this module): version 1. The released decoder reads the first three items and ignores
  the rest.
* **Person state**, inside a person record and a ``handoff``'s ``record``: the engine's own
  codec (``PersonState.to_list``/``from_list`` in pipeline/engine.py, its first item the version
  ``STATE_VERSION``; version 1 had none). It is not repeated here; ``person_state_version``
  reads its tag, and the decoders here refuse a person state newer than the engine reads.

A touch travels as the positional list of its first ``WIRE_FIELDS`` fields (what the released
``Touch(*fields)`` takes), its ``received_at`` beside it (``received``: one value, or one per
touch of a ``handoff``, present when any is known), and so does its ``segment`` (``segment`` /
``segments``, present when any is set; pipeline/segment_rules.py): keys a released decoder ignores.

A record of a version newer than this code reads raises ``ValueError`` naming the kind and the
version (the error policy dead-letters a message so; a state record so is reported and left
out). Bytes that are not JSON raise orjson's ``JSONDecodeError`` (a ``ValueError``), a missing
field ``KeyError``, any other malformation ``ValueError``: the reasons the dead letters gave
before this module. Encoding writes the current version: byte for byte the released layout plus
the tag, so a rolling upgrade may mix both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

import orjson

from pipeline.engine import STATE_VERSION
from pipeline.touch import Touch

MESSAGE_VERSION: Final = 1  # the hand-off message version written; read: 1 (tagged or not)
RECORD_VERSION: Final = 1  # the state record version written; read: 1 (tagged or not)
PERSON_STATE_VERSION: Final = STATE_VERSION  # the engine's (pipeline/engine.py)
# A touch in a message: its fields up to ``issue`` (the released ``Touch`` has no more);
# ``received_at`` travels beside it.
WIRE_FIELDS: Final = 17
MESSAGE_KINDS: Final = ("forward", "link", "redirect", "handoff", "frontier")
RECORD_KINDS: Final = ("person", "identifier", "outbox", "finished")

_new: Final = tuple.__new__
_KIND_PREFIX: Final = b'{"kind":"'


# --- hand-off messages ---------------------------------------------------------------------
class Forward(NamedTuple):
    """A touch for a person anchored in another partition."""

    person: str
    touch: Touch

    @property
    def kind(self) -> str:
        return "forward"


class Link(NamedTuple):
    """To the home of ``key``: ``person`` wants it (``touch`` travels with the request)."""

    key: str
    person: str
    touch: Touch
    awaits: str | None  # the link ``person`` waits for (its parked touches), if any

    @property
    def kind(self) -> str:
        return "link"


class Redirect(NamedTuple):
    """To an anonymous person's partition: ``person`` belongs to ``to``; move it there."""

    person: str
    to: str
    touch: Touch
    awaits: str | None

    @property
    def kind(self) -> str:
        return "redirect"


class Handoff(NamedTuple):
    """An answer to a link, to the person's partition: identifiers now the person's, and the
    state and touches of the person merged into it (``source``), if any."""

    person: str
    source: str | None
    record: list[Any] | None  # ``JourneyEngine.person_record``: [person state | None, ids]
    identifiers: list[str]
    foreign: list[str]
    touches: list[Touch]  # at least one
    awaits: str | None

    @property
    def kind(self) -> str:
        return "handoff"


class Frontier(NamedTuple):
    """Watermark alignment: what partition ``sender`` may still send, and which of the
    receiver's hand-off input records it has absorbed (docs/streaming-topology.md, "Time")."""

    sender: int  # "from" on the wire
    frontier: int | None
    candidate: int | None
    processed: int
    open: list[int]
    yours: int | None = None
    hello: bool = False
    # the sender's epoch (a shard's, new at each load: every frontier of this version carries
    # it), and the epoch of the receiver's hello this frontier answers
    epoch: int | None = None
    answers: int | None = None

    @property
    def kind(self) -> str:
        return "frontier"


Message = Forward | Link | Redirect | Handoff | Frontier


# --- state records -------------------------------------------------------------------------
class PersonRecord(NamedTuple):
    """``p:<person>``: the engine's record of a person anchored here and the shard's own."""

    record: list[Any] | None  # ``JourneyEngine.person_record``: [person state | None, ids]
    foreign: list[str]  # identifiers that are someone else's (sorted)
    awaiting: str | None  # the identifier being linked

    @property
    def kind(self) -> str:
        return "person"


class IdentifierRecord(NamedTuple):
    """``i:<identifier>``: an identifier homed here."""

    alias: str | None  # the person anchored elsewhere it belongs to
    seen: list[str]  # customers seen with it (sorted)
    blocked: bool

    @property
    def kind(self) -> str:
        return "identifier"


class OutboxRecord(NamedTuple):
    """``o:<sequence>``: a hand-off message this partition decided to send, saved with the
    state that decided it and sent only then; deleted once the broker has it. A partition that
    restarts sends again what its outbox holds (the receivers treat a message twice as once)."""

    route: str  # the key it is sent with (the identifier whose partition must act on it)
    message: str  # the encoded message (``encode_message``), as text
    at: int  # the earliest event time of the touches it carries (watermark alignment)

    @property
    def kind(self) -> str:
        return "outbox"


class FinishedRecord(NamedTuple):
    """``d:<sequence>``: input records of this partition a step finished (every effect saved
    with it: its outputs delivered, its state and outbox saved), by offset. Read again after a
    restart before the consumer's commit passed them (an earlier input still held keeps the
    commit back), they are acknowledged, not applied again: a replay could decide otherwise
    (an identifier's owner changed since) and apply a touch to a second person. Deleted once
    the commit has passed every offset in it."""

    touches: list[int]  # offsets on touchpoints.by_person
    handoffs: list[int]  # offsets on journeys.handoff
    step: int  # the sequence number in its key

    @property
    def kind(self) -> str:
        return "finished"


Record = PersonRecord | IdentifierRecord | OutboxRecord | FinishedRecord


# --- touches -------------------------------------------------------------------------------
def encode_touch(touch: Touch) -> list[Any]:
    """A touch as it travels: its first ``WIRE_FIELDS`` fields (``received_at`` beside it)."""
    return list(touch[:WIRE_FIELDS])


def decode_touch(
    data: Any, received: Any = None, kind: str = "touch", segment: Any = None
) -> Touch:
    """A touch from its wire list and the ``received_at`` and ``segment`` that travelled
    beside it (a message without them, from a released worker: None)."""
    if not isinstance(data, list) or not WIRE_FIELDS <= len(data) <= WIRE_FIELDS + 2:
        raise ValueError(f"{kind}: a touch is a list of {WIRE_FIELDS} fields, not {data!r:.80}")
    # What the shard itself needs of a touch: its id, its time and its identifiers (routing,
    # tokens, the watermark). The other fields are the engine's to judge: a touch it cannot
    # apply raises there, and the error policy refuses that touch alone.
    if not isinstance(data[0], str) or type(data[1]) is not int or not isinstance(data[7], list):
        raise ValueError(f"{kind}: a touch's id, time or identifiers malformed: {data!r:.80}")
    identifiers = []
    for pair in data[7]:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise ValueError(f"{kind}: an identifier is a [kind, value] pair, not {pair!r:.80}")
        identifiers.append((pair[0], pair[1]))
    fields = list(data)
    fields[7] = tuple(identifiers)
    if len(fields) == WIRE_FIELDS:
        fields.append(received if type(received) is int else None)
    if len(fields) == WIRE_FIELDS + 1:  # (a list of them all: a whole touch, segment last)
        fields.append(segment if isinstance(segment, str) else None)
    elif not isinstance(fields[-1], str):  # (its segment a text or None, as beside it)
        fields[-1] = None
    touch: Touch = _new(Touch, fields)  # every field given: NamedTuple's __new__ skipped
    return touch


def _received(touches: list[Touch]) -> list[int | None] | None:
    found = [t.received_at for t in touches]
    return found if any(r is not None for r in found) else None


def _segments(touches: list[Touch]) -> list[str | None] | None:
    found = [t.segment for t in touches]
    return found if any(s is not None for s in found) else None


# --- encoding ------------------------------------------------------------------------------
def encode_message(message: Message) -> bytes:
    """A hand-off message as it goes on the topic (the current version)."""
    body: dict[str, Any]
    if isinstance(message, Frontier):
        body = {"kind": "frontier", "from": message.sender}
        if message.frontier is not None:
            body["frontier"] = message.frontier
            body["candidate"] = message.candidate
        body["processed"] = message.processed
        body["open"] = message.open
        if message.yours is not None:
            body["yours"] = message.yours
        if message.hello:
            body["hello"] = True
        if message.epoch is not None:
            body["epoch"] = message.epoch
        if message.answers is not None:
            body["answers"] = message.answers
    elif isinstance(message, Handoff):
        touches = message.touches
        body = {
            "kind": "handoff",
            "person": message.person,
            "source": message.source,
            "record": message.record,
            "identifiers": message.identifiers,
            "foreign": message.foreign,
            "touches": [encode_touch(t) for t in touches],
            "awaits": message.awaits,
        }
        received = _received(touches)
        if received is not None:
            body["received"] = received
        segments = _segments(touches)
        if segments is not None:
            body["segments"] = segments
    else:
        touch = message.touch
        if isinstance(message, Forward):
            body = {"kind": "forward", "person": message.person, "touch": encode_touch(touch)}
        elif isinstance(message, Link):
            body = {
                "kind": "link",
                "key": message.key,
                "person": message.person,
                "touch": encode_touch(touch),
                "awaits": message.awaits,
            }
        else:
            body = {
                "kind": "redirect",
                "person": message.person,
                "to": message.to,
                "touch": encode_touch(touch),
                "awaits": message.awaits,
            }
        if touch.received_at is not None:
            body["received"] = touch.received_at
        if touch.segment is not None:
            body["segment"] = touch.segment
    body["v"] = MESSAGE_VERSION
    return orjson.dumps(body)


def encode_record(record: Record) -> bytes:
    """A state record as it is saved (the current version): its three items, then the
    version (``RECORD_VERSION``)."""
    return orjson.dumps([record[0], record[1], record[2], RECORD_VERSION])


# --- decoding ------------------------------------------------------------------------------
def _newer(what: str, version: Any, reads: int) -> ValueError:
    return ValueError(
        f"{what} of version {version!r}: this worker reads versions 1 to {reads} "
        "(a newer worker wrote it: upgrade this one)"
    )


def _str(data: dict[str, Any], name: str, kind: str) -> str:
    value = data[name]  # (a missing field: KeyError, as before the codec)
    if not isinstance(value, str):
        raise ValueError(f"{kind} message: {name!r} is not a string: {value!r:.80}")
    return value


def _opt_str(data: dict[str, Any], name: str, kind: str) -> str | None:
    value = data[name]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{kind} message: {name!r} is not a string: {value!r:.80}")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} is not a list of strings: {value!r:.80}")
    return value


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{what} is not an integer: {value!r:.80}")
    return value


def person_state_version(state: list[Any]) -> int:
    """The version of a saved person state (the engine's format: version 2 and later start
    with their version, version 1 with its journeys)."""
    return state[0] if state and type(state[0]) is int else 1


def _person(record: Any, kind: str) -> list[Any] | None:
    """``JourneyEngine.person_record`` as saved or sent: [person state | None, identifiers]."""
    if record is None:
        return None
    if not isinstance(record, list) or len(record) < 2:
        raise ValueError(f"{kind}: a person record is [state, identifiers], not {record!r:.80}")
    state = record[0]
    if state is not None:
        if not isinstance(state, list) or not state:
            raise ValueError(f"{kind}: a person state is a list, not {state!r:.80}")
        version = person_state_version(state)
        if version > PERSON_STATE_VERSION or version < 1:
            raise _newer("person state", version, PERSON_STATE_VERSION)
    _strings(record[1], f"{kind}: a person record's identifiers")
    return record


def _touch_of(data: dict[str, Any], kind: str) -> Touch:
    return decode_touch(data["touch"], data.get("received"), kind, data.get("segment"))


def _decode_forward(data: dict[str, Any]) -> Forward:
    return Forward(_str(data, "person", "forward"), _touch_of(data, "forward"))


def _decode_link(data: dict[str, Any]) -> Link:
    return Link(
        _str(data, "key", "link"),
        _str(data, "person", "link"),
        _touch_of(data, "link"),
        _opt_str(data, "awaits", "link"),
    )


def _decode_redirect(data: dict[str, Any]) -> Redirect:
    return Redirect(
        _str(data, "person", "redirect"),
        _str(data, "to", "redirect"),
        _touch_of(data, "redirect"),
        _opt_str(data, "awaits", "redirect"),
    )


def _decode_handoff(data: dict[str, Any]) -> Handoff:
    carried = data["touches"]
    if not isinstance(carried, list) or not carried:
        raise ValueError(f"handoff message: carries no touch: {carried!r:.80}")
    received = data.get("received")
    if received is None:
        received = [None] * len(carried)
    elif not isinstance(received, list) or len(received) != len(carried):
        raise ValueError(f"handoff message: 'received' does not match its touches: {received!r}")
    segments = data.get("segments")
    if not isinstance(segments, list) or len(segments) != len(carried):
        segments = [None] * len(carried)
    return Handoff(
        _str(data, "person", "handoff"),
        _opt_str(data, "source", "handoff"),
        _person(data["record"], "handoff message"),
        _strings(data["identifiers"], "handoff message: 'identifiers'"),
        _strings(data["foreign"], "handoff message: 'foreign'"),
        [
            decode_touch(t, r, "handoff", g)
            for t, r, g in zip(carried, received, segments, strict=True)
        ],
        _opt_str(data, "awaits", "handoff"),
    )


def _decode_frontier(data: dict[str, Any]) -> Frontier:
    frontier = candidate = None
    if "frontier" in data:
        frontier = _int(data["frontier"], "frontier message: 'frontier'")
        candidate = _int(data["candidate"], "frontier message: 'candidate'")
    still = data.get("open") or []
    if not isinstance(still, list) or not all(type(o) is int for o in still):
        raise ValueError(f"frontier message: 'open' is not a list of offsets: {still!r:.80}")
    yours = data.get("yours")
    epoch, answers = data.get("epoch"), data.get("answers")
    return Frontier(
        _int(data["from"], "frontier message: 'from'"),
        frontier,
        candidate,
        _int(data["processed"], "frontier message: 'processed'"),
        still,
        yours if type(yours) is int else None,
        bool(data.get("hello")),
        epoch if type(epoch) is int else None,
        answers if type(answers) is int else None,
    )


_DECODERS: Final[dict[str, Callable[[dict[str, Any]], Message]]] = {
    "forward": _decode_forward,
    "link": _decode_link,
    "redirect": _decode_redirect,
    "handoff": _decode_handoff,
    "frontier": _decode_frontier,
}


def decode_message(raw: bytes) -> Message:
    """A hand-off message of any version this worker reads (``ValueError`` or, a field
    missing, ``KeyError`` otherwise)."""
    data = orjson.loads(raw)  # (not JSON: orjson's JSONDecodeError, a ValueError)
    if not isinstance(data, dict):
        raise ValueError(f"a hand-off message is a JSON object, not {raw!r:.80}")
    kind = data.get("kind")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ValueError(f"unknown hand-off message kind {kind!r}")
    version = data.get("v", 1)
    if type(version) is not int or not 1 <= version <= MESSAGE_VERSION:
        raise _newer(f"hand-off message {kind!r}", version, MESSAGE_VERSION)
    return decoder(data)


def message_kind(raw: bytes) -> str:
    """The kind of a hand-off message (``"other"``: none this worker reads). Messages this
    codec writes start with ``{"kind":"<kind>"`` (orjson writes keys in order, without spaces,
    and no kind needs escaping), read without decoding the rest; any other bytes are decoded."""
    if raw.startswith(_KIND_PREFIX):
        end = raw.find(b'"', len(_KIND_PREFIX))
        kind = raw[len(_KIND_PREFIX) : end].decode("ascii", "replace") if end > 0 else ""
        if kind in _DECODERS:
            return kind
    try:
        return decode_message(raw).kind
    except (ValueError, KeyError):
        return "other"


def decode_record(key: str, raw: bytes) -> Record:
    """A saved state record (``p:<person>``, ``i:<identifier>``, ``o:<sequence>``) of any
    version this worker reads (``ValueError`` otherwise)."""
    if key.startswith("p:"):
        kind = "person"
    elif key.startswith("i:"):
        kind = "identifier"
    elif key.startswith("o:"):
        kind = "outbox"
    elif key.startswith("d:"):
        kind = "finished"
    else:
        raise ValueError(f"not a journey state key: {key!r}")
    data = orjson.loads(raw)
    if not isinstance(data, list) or len(data) < 3:
        raise ValueError(f"{kind} record {key!r}: not a list of three items: {raw!r:.80}")
    version = data[3] if len(data) > 3 else 1
    if type(version) is not int or not 1 <= version <= RECORD_VERSION:
        raise _newer(f"{kind} record", version, RECORD_VERSION)
    if kind == "person":
        awaiting = data[2]
        if awaiting is not None and not isinstance(awaiting, str):
            raise ValueError(f"person record {key!r}: awaits {awaiting!r:.80}")
        return PersonRecord(
            _person(data[0], f"person record {key!r}"),
            _strings(data[1] or [], f"person record {key!r}: foreign identifiers"),
            awaiting,
        )
    if kind == "outbox":
        route, message, at = data[0], data[1], data[2]
        if not isinstance(route, str) or not isinstance(message, str) or type(at) is not int:
            raise ValueError(f"outbox record {key!r}: not a route, message and time: {raw!r:.80}")
        return OutboxRecord(route, message, at)
    if kind == "finished":
        touches, handoffs, step = data[0], data[1], data[2]
        if not (
            isinstance(touches, list)
            and isinstance(handoffs, list)
            and all(type(o) is int for o in touches)
            and all(type(o) is int for o in handoffs)
            and type(step) is int
        ):
            raise ValueError(f"finished record {key!r}: not two lists of offsets: {raw!r:.80}")
        return FinishedRecord(touches, handoffs, step)
    alias = data[0]
    if alias is not None and not isinstance(alias, str):
        raise ValueError(f"identifier record {key!r}: an alias {alias!r:.80}")
    return IdentifierRecord(
        alias, _strings(data[1] or [], f"identifier record {key!r}: customers"), bool(data[2])
    )
