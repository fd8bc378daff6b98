"""The codec of everything a worker saves or sends to another worker (pipeline/codec.py).

Golden samples (tests/golden/codec-v*/, written by tests/golden/generate_codec.py from the code
of the commit each names) and the released version's own records (tests/golden/released-*/)
must keep decoding, to the typed values the code that wrote them meant; what the codec writes is
their bytes plus the version tag, and the released code reads it as it reads its own.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import codec
from pipeline.codec import (
    FinishedRecord,
    Forward,
    Frontier,
    Handoff,
    IdentifierRecord,
    Link,
    Message,
    OutboxRecord,
    PersonRecord,
    Record,
    Redirect,
    decode_message,
    decode_record,
    encode_message,
    encode_record,
    message_kind,
)
from pipeline.definitions import load_catalog
from pipeline.engine import STATE_VERSION, JourneyEngine
from pipeline.shard import _NONCE, _NONCE_END, _NONCE_TAIL, JourneyShard
from pipeline.touch import Touch

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CODEC_VERSIONS = sorted(p for p in GOLDEN.glob("codec-v*") if p.is_dir())
RELEASES = sorted(p for p in GOLDEN.glob("released-*") if p.is_dir())
TYPES: dict[str, type] = {
    "forward": Forward,
    "link": Link,
    "redirect": Redirect,
    "handoff": Handoff,
    "frontier": Frontier,
}


# --- what the writer meant: read as the code before the codec read it ------------------------
def _touch(fields: list[Any], received: Any) -> Touch:
    fields = list(fields)
    fields[7] = tuple(tuple(pair) for pair in fields[7])
    touch = Touch(*fields)
    return touch._replace(received_at=received) if isinstance(received, int) else touch


def meant(raw: bytes) -> Message:
    """A hand-off message as the code that wrote it read it (its dict, by key)."""
    d = orjson.loads(raw)
    kind = d["kind"]
    if kind == "forward":
        return Forward(d["person"], _touch(d["touch"], d.get("received")))
    if kind == "link":
        return Link(d["key"], d["person"], _touch(d["touch"], d.get("received")), d["awaits"])
    if kind == "redirect":
        touch = _touch(d["touch"], d.get("received"))
        return Redirect(d["person"], d["to"], touch, d["awaits"])
    if kind == "handoff":
        received = d.get("received") or [None] * len(d["touches"])
        touches = [_touch(t, r) for t, r in zip(d["touches"], received, strict=True)]
        return Handoff(
            d["person"],
            d["source"],
            d["record"],
            d["identifiers"],
            d["foreign"],
            touches,
            d["awaits"],
        )
    assert kind == "frontier"
    return Frontier(
        d["from"],
        d["frontier"],
        d["candidate"],
        d["processed"],
        d["open"],
        d.get("yours"),
        bool(d.get("hello")),
        d.get("epoch"),
        d.get("answers"),
    )


def meant_record(key: str, raw: bytes) -> Record:
    d = orjson.loads(raw)
    if key.startswith("p:"):
        return PersonRecord(d[0], d[1], d[2])
    if key.startswith("o:"):
        return OutboxRecord(d[0], d[1], d[2])
    if key.startswith("d:"):
        return FinishedRecord(d[0], d[1], d[2])
    return IdentifierRecord(d[0], d[1], d[2])


def nonce(raw: bytes) -> bytes:
    """The identity a release since 6c76a49 appended to a hand-off message it sent from its
    outbox (``,"n":"<16 hex digits>"`` before the closing brace, as pipeline/shard.py finds
    it), or b"": the shard's, not the codec's, which neither reads nor writes it."""
    return raw[-_NONCE_END - 1 : -1] if raw[-_NONCE_END:-_NONCE_TAIL] == _NONCE else b""


def sent(raw: bytes, encoded: bytes) -> bytes:
    """``encoded`` (the codec's bytes of ``raw``) as the shard sends it: with raw's identity."""
    identity = nonce(raw)
    return encoded[:-1] + identity + b"}" if identity else encoded


def tagged(raw: bytes) -> bytes:
    """Bytes of the released layout with the version tag the codec adds (as they are, when a
    release that had the codec wrote them: tagged already), a message's identity left out."""
    if raw.startswith(b"{"):
        identity = nonce(raw)
        if identity:
            raw = raw[: -len(identity) - 1] + b"}"
        return raw if "v" in orjson.loads(raw) else raw[:-1] + b',"v":1}'
    return raw if len(orjson.loads(raw)) > 3 else raw[:-1] + b",1]"


def golden_messages(directory: Path) -> list[tuple[str, bytes]]:
    found = []
    for kind in codec.MESSAGE_KINDS:
        body = json.loads((directory / f"{kind}.json").read_text())
        assert body["kind"] == kind and body["messages"], kind
        found += [(kind, m.encode()) for m in body["messages"]]
    return found


def golden_records(directory: Path) -> list[tuple[str, bytes]]:
    found = []
    for kind in codec.RECORD_KINDS:
        if kind in ("outbox", "finished") and not (directory / f"{kind}.json").exists():
            continue  # (written before the outbox)
        body = json.loads((directory / f"{kind}.json").read_text())
        assert body["kind"] == kind and body["records"], kind
        found += [(r["key"], r["raw"].encode()) for r in body["records"]]
    return found


def released_messages(release: Path) -> list[bytes]:
    pending = json.loads((release / "pending.json").read_text())
    return [r["value"].encode() for r in pending if "value" in r]


def released_records(release: Path) -> list[tuple[str, bytes]]:
    state = json.loads((release / "state.json").read_text())
    return [(k, base64.b64decode(v)) for records in state.values() for k, v in records.items()]


# --- golden files ------------------------------------------------------------------------------
def test_there_are_golden_files_of_every_kind() -> None:
    assert CODEC_VERSIONS and RELEASES
    for directory in CODEC_VERSIONS:
        kinds = {kind for kind, _ in golden_messages(directory)}
        assert kinds == set(codec.MESSAGE_KINDS)
        keys = {key[:2] for key, _ in golden_records(directory)}
        assert keys == {"p:", "i:"} or keys == {"p:", "i:", "o:", "d:"}
    assert {key[:2] for key, _ in golden_records(CODEC_VERSIONS[-1])} == {"p:", "i:", "o:", "d:"}


@pytest.mark.parametrize("directory", CODEC_VERSIONS, ids=lambda p: p.name)
def test_golden_messages_decode_to_what_their_writer_meant_and_round_trip(
    directory: Path,
) -> None:
    for kind, raw in golden_messages(directory):
        message = decode_message(raw)
        assert type(message) is TYPES[kind] and message.kind == kind
        assert message == meant(raw), raw
        encoded = encode_message(message)
        assert encoded == tagged(raw)  # the released layout, byte for byte, plus "v"
        again = decode_message(encoded)
        assert type(again) is type(message) and again == message
        assert message_kind(raw) == message_kind(encoded) == kind


@pytest.mark.parametrize("directory", CODEC_VERSIONS, ids=lambda p: p.name)
def test_golden_records_decode_to_what_their_writer_meant_and_round_trip(directory: Path) -> None:
    versions = set()
    for key, raw in golden_records(directory):
        record = decode_record(key, raw)
        types = {
            "p:": PersonRecord,
            "i:": IdentifierRecord,
            "o:": OutboxRecord,
            "d:": FinishedRecord,
        }
        assert type(record) is types[key[:2]]
        assert record == meant_record(key, raw), raw
        if isinstance(record, OutboxRecord):  # the message it holds decodes as sent
            assert message_kind(record.message.encode()) in codec.MESSAGE_KINDS
        encoded = encode_record(record)
        assert encoded == tagged(raw)
        assert decode_record(key, encoded) == record
        if isinstance(record, PersonRecord) and record.record and record.record[0]:
            versions.add(codec.person_state_version(record.record[0]))
    assert versions == {1, 2}  # the released person state and today's


def test_golden_samples_decode_to_these_values() -> None:
    """A few samples spelled out, so a decoder that agrees with the oracle above for the wrong
    reason (both reading a field from the wrong place) fails here."""
    v1 = GOLDEN / "codec-v1"
    forwards = [raw for kind, raw in golden_messages(v1) if kind == "forward"]
    every = decode_message(forwards[-1])
    assert every == Forward(
        "c:c4",
        Touch(
            "evt-ü-1",
            1_794_787_200_123,
            "call_center",
            "queue.wait",
            "wait",
            "failed",
            "timeout — «long»",
            (("customer_id", "c4"), ("email_hash", "e✓"), ("device_id", "d 1")),
            "call-7",
            61_000,
            420_000,
            2,
            -100,
            -0.75,
            12.5,
            "EUR",
            "billing",
            1_794_787_200_456,
        ),
    )
    redirect = decode_message(
        b'{"kind":"redirect","person":"a:email_hash:e7","to":"c:c8","touch":["s3-61",'
        b'1793580520971,"web","cart.add","add","ok",null,[["email_hash","e7"],["device_id",'
        b'"tablet2"]],null,null,null,null,null,null,null,null,null],"awaits":"device_id:tablet2"}'
    )
    assert isinstance(redirect, Redirect)
    assert (redirect.person, redirect.to, redirect.awaits) == (
        "a:email_hash:e7",
        "c:c8",
        "device_id:tablet2",
    )
    assert redirect.touch.identifiers == (("email_hash", "e7"), ("device_id", "tablet2"))
    assert redirect.touch.received_at is None
    frontier = decode_message(
        b'{"kind":"frontier","from":0,"frontier":1793577807805,"candidate":1793577807805,'
        b'"processed":0,"open":[],"yours":-4611686018427387904}'
    )
    assert frontier == Frontier(0, 1793577807805, 1793577807805, 0, [], -(2**62), False)
    kiosk = decode_record("i:device_id:kiosk1", b'["c:c0",["c:c0","c:c3","c:c4","c:c7"],true]')
    assert kiosk == IdentifierRecord("c:c0", ["c:c0", "c:c3", "c:c4", "c:c7"], True)
    waiting = decode_record("p:c:c0", b'[null,["email_hash:e0"],"device_id:kiosk0"]')
    assert waiting == PersonRecord(None, ["email_hash:e0"], "device_id:kiosk0")
    handoffs = [decode_message(raw) for kind, raw in golden_messages(v1) if kind == "handoff"]
    first = handoffs[0]
    assert isinstance(first, Handoff)
    assert (first.person, first.source, first.identifiers, first.awaits) == (
        "c:cus-000050",
        "a:device_id:dev-000050",
        ["device_id:dev-000050"],
        "device_id:dev-000050",
    )
    assert [t.received_at for t in first.touches] == [1794009600000] * 3
    assert [t.event_id[:8] for t in first.touches] == ["400d6f8c", "0221cea9", "b4657668"]


@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
def test_what_the_released_code_wrote_decodes(release: Path) -> None:
    messages = released_messages(release)
    assert messages
    for raw in messages:
        message = decode_message(raw)
        assert message == meant(raw)
        assert encode_message(message) == tagged(raw)
    records = released_records(release)
    # (a release since the outbox saves hand-off messages not yet sent too: "o:", "d:")
    assert {"p:", "i:"} <= {key[:2] for key, _ in records} <= {"p:", "i:", "o:", "d:"}
    for key, raw in records:
        record = decode_record(key, raw)
        assert record == meant_record(key, raw)
        assert encode_record(record) == tagged(raw)


RELEASED_READER = """
import json, random, sys, zlib
import pipeline
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.shard import JourneyShard
job = json.load(sys.stdin)
catalog = load_catalog()
def shard(partition):
    return JourneyShard(
        JourneyEngine(catalog), partition, lambda key: zlib.crc32(key.encode()) % 3
    )
def reaction(raw, partition):
    random.seed(partition)  # (a release since 6c76a49 gives each message it sends a random id)
    s = shard(partition)
    try:
        s.message(raw.encode(), "token")
        step = s.drain()
    except Exception as exc:
        return ["error", type(exc).__name__, str(exc)]
    # (a relayed handoff keeps the keys it came with, the version tag too: left out here)
    sends = [[k, {f: x for f, x in json.loads(v).items() if f != "v"}] for k, v in step.sends]
    return ["ok", sends,
            {k: v and v.decode() for k, v in step.records.items()},
            sorted(repr(o) for o in step.outputs), [str(t) for t in step.done]]
def loaded(key, raw):
    s = shard(0)
    try:
        s.load([(key, raw.encode())])
    except Exception as exc:
        return ["error", type(exc).__name__, str(exc)]
    persons = {k: v.decode() for k, v in s.engine.snapshot().items()}
    return ["ok", persons, sorted(s.foreign.get(key[2:], ())),
            s.awaiting.get(key[2:]), s.aliases.get(key[2:]),
            sorted(s.graph.customers_seen.get(key[2:], ())), key[2:] in s.graph.blocked,
            sorted(s.graph.owner.items())]
out = {"module": pipeline.__file__, "messages": [], "records": []}
for old, new in job["messages"]:
    for partition in range(3):
        out["messages"].append([reaction(old, partition), reaction(new, partition)])
for key, old, new in job["records"]:
    out["records"].append([loaded(key, old), loaded(key, new)])
print(json.dumps(out))
"""


@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
def test_the_released_code_reads_what_the_codec_writes_as_it_reads_its_own(
    release: Path, tmp_path: Path
) -> None:
    """The other direction of a rolling upgrade: a released worker given a message or a state
    record as the codec writes it (the version tag added) does exactly what it does with the
    same record as it wrote it: the same sends (a relayed ``handoff`` keeps the tag), records,
    outputs and acknowledgements, the same
    state loaded (or the same error: a ``frontier``, which it never knew; a ``handoff`` with
    today's person state, which a rolling upgrade writes only after its first restart)."""
    from tests.helpers import extract_release, released_env

    extract_release(release.name.removeprefix("released-"), tmp_path, "pipeline")
    messages = [raw for _, raw in golden_messages(GOLDEN / "codec-v1")]
    messages += released_messages(release)
    records = golden_records(GOLDEN / "codec-v1") + released_records(release)
    job = {
        "messages": [
            [m.decode(), sent(m, encode_message(decode_message(m))).decode()] for m in messages
        ],
        "records": [
            [k, r.decode(), encode_record(decode_record(k, r)).decode()] for k, r in records
        ],
    }
    result = subprocess.run(
        [sys.executable, "-c", RELEASED_READER],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=released_env(dict(os.environ)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    released = json.loads(result.stdout)
    assert Path(released["module"]).is_relative_to(tmp_path)  # the released code, not ours
    reactions = released["messages"]
    assert [old for old, new in reactions if old != new] == []
    assert sum(1 for old, _ in reactions if old[0] == "ok") > len(reactions) // 2
    # what it cannot read, it cannot read in either form: a frontier (no such kind then), a
    # person state of version 2 (the engine's: written only once no released worker is left)
    for (old, _), raw in zip(reactions, [m for m in messages for _ in range(3)], strict=True):
        if old[0] == "error":
            message = decode_message(raw)
            if isinstance(message, Frontier):
                assert old[1:] == ["ValueError", "unknown hand-off message kind 'frontier'"]
            else:
                assert isinstance(message, Handoff) and message.record, old
                assert codec.person_state_version(message.record[0]) == 2, old
    loads = released["records"]
    assert [old for old, new in loads if old != new] == []
    assert sum(1 for old, _ in loads if old[0] == "ok") > len(loads) // 2
    for (old, _), (key, raw) in zip(loads, records, strict=True):
        if old[0] == "error":
            record = decode_record(key, raw)
            assert isinstance(record, PersonRecord) and record.record, old
            assert codec.person_state_version(record.record[0]) == 2, old


# --- versions this worker does not read ------------------------------------------------------
def test_a_message_of_an_unknown_future_version_is_refused_naming_kind_and_version() -> None:
    for kind, raw in golden_messages(GOLDEN / "codec-v1"):
        future = raw[:-1] + b',"v":2}'
        with pytest.raises(ValueError, match=f"hand-off message '{kind}' of version 2"):
            decode_message(future)
    for version in (b"0", b'"1"', b"null", b"1.5"):
        with pytest.raises(ValueError, match="of version"):
            decode_message(b'{"kind":"forward","v":' + version + b"}")
    with pytest.raises(ValueError, match="unknown hand-off message kind 'teleport'"):
        decode_message(b'{"kind":"teleport","v":1}')


def test_a_record_of_an_unknown_future_version_is_refused_naming_kind_and_version() -> None:
    with pytest.raises(ValueError, match="person record of version 2"):
        decode_record("p:c:x", b'[null,["e"],null,2]')
    with pytest.raises(ValueError, match="identifier record of version 7"):
        decode_record("i:device_id:x", b'["c:x",[],false,7]')
    newer = STATE_VERSION + 1
    state = f"[[{newer},0,[],{{}},[],null,null,null,null,0,false],[]]"
    with pytest.raises(ValueError, match=f"person state of version {newer}"):
        decode_record("p:c:x", f"[{state},[],null]".encode())
    handoff = orjson.loads(dict(golden_messages(GOLDEN / "codec-v1"))["handoff"])
    handoff["record"] = orjson.loads(state)
    with pytest.raises(ValueError, match=f"person state of version {newer}"):
        decode_message(orjson.dumps(handoff))
    with pytest.raises(ValueError, match="not a journey state key"):
        decode_record("x:y", b"[null,[],null]")


def test_the_shard_refuses_them_as_errors_the_policy_dead_letters() -> None:
    """A ValueError from ``JourneyShard.message`` is dead-lettered by the error policy
    (streams/journeys.py), and a state record that fails to load is reported and left out."""
    shard = JourneyShard(JourneyEngine(load_catalog()), 0, lambda key: 0, 2)
    forward = dict(golden_messages(GOLDEN / "codec-v1"))["forward"]
    with pytest.raises(ValueError, match="hand-off message 'forward' of version 9"):
        shard.message(forward[:-1] + b',"v":9}', "t", 0)
    failed: list[tuple[str, bytes, Exception]] = []
    shard.load([("p:c:x", b'[null,["e"],null,3]'), ("i:e", b'["c:y",[],false,1]')], failed)
    assert [key for key, _, _ in failed] == ["p:c:x"]
    assert str(failed[0][2]).startswith("person record of version 3: this worker reads")
    assert shard.aliases == {"e": "c:y"} and "c:x" not in shard.foreign


def test_malformed_messages_are_refused() -> None:
    for raw in (
        b"{not a message",
        b"[1,2]",
        b'{"kind": "handoff", "person": "c:nobody"}',
        b'{"kind":"forward","person":"c:x","touch":["e",1]}',
        b'{"kind":"forward","person":"c:x","touch":["e","1","web","a","b","ok",null,[],'
        b"null,null,null,null,null,null,null,null,null]}",
        b'{"kind":"forward","person":"c:x","touch":["e",1,"web","a","b","ok",null,[["d"]],'
        b"null,null,null,null,null,null,null,null,null]}",
        b'{"kind":"frontier","from":"0","processed":0}',
    ):
        with pytest.raises((ValueError, KeyError)):
            decode_message(raw)
        assert message_kind(raw) in ("other", *codec.MESSAGE_KINDS)
    # the reasons the dead letters gave before the codec (tests/integration/test_journey_errors)
    with pytest.raises(orjson.JSONDecodeError):
        decode_message(b"{not a message")
    with pytest.raises(KeyError):
        decode_message(b'{"kind": "handoff", "person": "c:nobody"}')


def test_message_kind_reads_the_kind_without_guessing() -> None:
    assert message_kind(b'{"kind":"teleport"}') == "other"
    assert message_kind(b"not json") == "other"
    # a kind's name elsewhere in the message is not its kind (the old byte scan's mistake)
    link = dict(golden_messages(GOLDEN / "codec-v1"))["link"]
    spaced = orjson.dumps(orjson.loads(link), option=orjson.OPT_INDENT_2)
    assert message_kind(spaced) == "link"
    tricky = orjson.loads(link)
    tricky["person"] = "a:device_id:forward"
    reordered = orjson.dumps({"person": tricky.pop("person"), **tricky})
    assert message_kind(reordered) == "link"


# --- any touch ---------------------------------------------------------------------------------
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
OPTIONAL_TEXT = st.none() | TEXT
TIME = st.integers(-(2**62), 2**62)
SMALL = st.none() | st.integers(-(2**53), 2**53)
NUMBER = st.none() | st.floats(allow_nan=False, allow_infinity=False)
IDENTIFIERS = st.lists(st.tuples(TEXT, TEXT), max_size=4).map(tuple)
TOUCHES = st.builds(
    Touch,
    TEXT,
    TIME,
    TEXT,
    TEXT,
    TEXT,
    TEXT,
    OPTIONAL_TEXT,
    IDENTIFIERS,
    OPTIONAL_TEXT,
    SMALL,
    SMALL,
    SMALL,
    SMALL,
    NUMBER,
    NUMBER,
    OPTIONAL_TEXT,
    OPTIONAL_TEXT,
    st.none() | TIME,
    OPTIONAL_TEXT,  # segment (travels beside the touch, as received_at does)
)
STRINGS = st.lists(TEXT, max_size=3)
MESSAGES = st.one_of(
    st.builds(Forward, TEXT, TOUCHES),
    st.builds(Link, TEXT, TEXT, TOUCHES, OPTIONAL_TEXT),
    st.builds(Redirect, TEXT, TEXT, TOUCHES, OPTIONAL_TEXT),
    st.builds(
        Handoff,
        TEXT,
        OPTIONAL_TEXT,
        st.none() | st.tuples(st.none(), STRINGS).map(list),
        STRINGS,
        STRINGS,
        st.lists(TOUCHES, min_size=1, max_size=4),
        OPTIONAL_TEXT,
    ),
    st.builds(
        Frontier,
        st.integers(0, 1_000),
        TIME,
        TIME,
        st.integers(0, 2**40),
        st.lists(st.integers(0, 2**40), max_size=4),
        st.none() | TIME,
        st.booleans(),
        st.none() | st.integers(0, 2**63 - 1),  # a shard's epoch (getrandbits(63))
        st.none() | st.integers(0, 2**63 - 1),
    ),
)


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_any_message_round_trips(message: Message) -> None:
    raw = encode_message(message)
    again = decode_message(raw)
    assert type(again) is type(message) and again == message
    assert message_kind(raw) == message.kind
    assert encode_message(again) == raw
    # the released decoder's view: a touch is 17 positional fields, received_at beside it
    data = orjson.loads(raw)
    for fields in data.get("touches") or ([data["touch"]] if "touch" in data else []):
        assert len(fields) == codec.WIRE_FIELDS


@settings(max_examples=200, deadline=None)
@given(st.lists(TOUCHES, min_size=1, max_size=3))
def test_any_touch_round_trips_through_the_shard_protocol(touches: list[Touch]) -> None:
    """Touches sent by one shard (``_send``) come out of another's decoder unchanged."""
    sender = JourneyShard(JourneyEngine(load_catalog()), 0, lambda key: 1, 2)
    sender._send("k", Handoff("c:x", None, None, [], [], touches, None))
    for touch in touches:
        sender._send("k", Forward("c:x", touch))
    step = sender.drain()
    decoded = [decode_message(raw) for _, raw in step.sends]
    assert isinstance(decoded[0], Handoff) and decoded[0].touches == touches
    assert [m.touch for m in decoded[1:] if isinstance(m, Forward)] == touches


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.builds(
            PersonRecord,
            st.none() | st.tuples(st.none(), STRINGS).map(list),
            STRINGS,
            OPTIONAL_TEXT,
        ),
        st.builds(IdentifierRecord, OPTIONAL_TEXT, STRINGS, st.booleans()),
    )
)
def test_any_record_round_trips(record: Record) -> None:
    key = ("p:" if isinstance(record, PersonRecord) else "i:") + "k"
    raw = encode_record(record)
    assert decode_record(key, raw) == record
    assert orjson.loads(raw)[3] == codec.RECORD_VERSION
