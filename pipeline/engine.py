"""The journey engine: touchpoints in, journey outcomes, negative moments, scores and KPIs out.

Deterministic and driven by event time. Events are held until the watermark (the highest event
time seen minus the allowed lateness) passes them, then applied in event-time order, with the
drop-off deadlines that fall between them. So any arrival order within the lateness gives the
same outputs. Events later than that are applied at once and counted (see ``late_events`` and
docs/journey-engine.md for the rule). Nothing here reads a clock: the adapter passes the
wall-clock time to ``tick`` only to advance the watermark when input is idle.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from heapq import heappop, heappush
from struct import Struct
from sys import intern
from typing import Any, Final, NamedTuple
from zlib import adler32, crc32

import orjson

from pipeline.definitions import JourneyCatalog, JourneyDefinition, Pattern
from pipeline.experience import (
    GOAL_VALUE,
    NEGATIVE_INTENSITY,
    more_intense,
    peak_end_score,
    positive_value,
    weighted,
)
from pipeline.identity import IdentityGraph
from pipeline.touch import Touch

Pending = tuple[int, str, int, Touch, list[str]]  # (at, event_id, seq, touch, identity keys)
GOAL: Final = -1
SEQ_BITS: Final = 40  # deadline keys: due << SEQ_BITS | sequence number (unique while queued)
SEQ_MASK: Final = (1 << SEQ_BITS) - 1
ASSISTED: Final = frozenset({"call_center", "chat", "email"})
SESSION_GAP_MS: Final = 30 * 60_000  # a channel's session gap when the journeys file has none
RECENT_IDS: Final = 64
_RESPONDING: Final = ASSISTED | {"store"}
CHANNELS: Final = ("web", "app", "call_center", "store", "chat", "email", "social")
CHANNEL_BIT: Final = {name: 1 << i for i, name in enumerate(CHANNELS)}


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


_new: Final = tuple.__new__  # Output's fields all given: skips NamedTuple's Python __new__


def _keys(touch: Touch) -> list[str]:
    """The identity graph's keys of a touch's identifiers (``kind:value``)."""
    return [kind + ":" + value for kind, value in touch.identifiers]


_MARKER: Final = Struct("<II")  # (adler32, crc32): _id_hash's int as 8 little-endian bytes
MARKER_SIZE: Final = 8


def _marker(event_id: str) -> bytes:
    """An applied event's 8-byte marker in ``PersonState.recent``."""
    raw = event_id.encode()
    return _MARKER.pack(adler32(raw), crc32(raw))


def _seen(recent: bytes, marker: bytes) -> bool:
    """Whether ``marker`` is one of the 8-byte markers packed in ``recent``."""
    found = recent.find(marker)
    while found >= 0:
        if found % MARKER_SIZE == 0:
            return True
        found = recent.find(marker, found + 1)
    return False


def _recent_bytes(markers: list[int]) -> bytes:
    return b"".join(marker.to_bytes(MARKER_SIZE, "little") for marker in markers)


def _id_hash(event_id: str) -> int:
    """64 bits that stay the same across processes (unlike ``hash``), cheaply."""
    raw = event_id.encode()
    return crc32(raw) << 32 | adler32(raw)


class Output(NamedTuple):
    """One fact the engine emits. ``output_id`` is deterministic: consumers deduplicate on it.

    ``type`` is one of: ``journey`` (name: started, stage_reached, converted, dropped_off,
    resumed, merged, dropoff_retracted), ``negative_moment`` (name: its kind),
    ``moment_of_truth`` (name: the MOT; detail.passed), ``score`` (name: peak_end), ``kpi``
    (name: conversion, csat, nps, first_contact_resolution, complaint_response,
    ltv_increment, churn_risk), ``identity`` (name: merged, identifier_blocked, linked).

    ``identity``/``linked`` says that an identifier (detail ``identifier``, its key
    ``kind:value``, e-mails and phones already hashed) belongs to the person from ``at`` on:
    reported once per identifier and person (key ``linked:<identifier>:<person>``), when the
    engine first links it (the first touch carrying it) or takes it over from another partition
    (pipeline/shard.py). An anonymous person merged into another keeps its links: the merge says
    that its identifiers are the other's now. The sink keeps them in ``identity_links``.

    One outcome per journey, revised at most once: a journey ends ``converted``,
    ``dropped_off`` or ``merged``. A drop-off is reported once, at the stage's deadline; when
    touchpoints within the definition's ``resume_within`` then convert the journey, the engine
    emits ``dropoff_retracted`` (key ``dropoff_retracted:<journey_id>``; at, stage and channel
    those of the drop-off; detail: ``retracts``, the drop-off's output_id, and the converting
    touchpoint's ``converted_event_id`` and ``converted_at``) just before ``converted``.
    A journey that resumes and stalls again keeps its one drop-off (no second drop-off, no
    retraction); ``resumed`` alone revises nothing.
    """

    type: str
    name: str
    key: str  # what makes the output unique; output_id is its hash
    at: int
    person_id: str
    journey: str | None = None
    journey_id: str | None = None
    stage: str | None = None
    channel: str | None = None
    touchpoint: str | None = None
    event_id: str | None = None
    value: float | None = None
    detail: tuple[tuple[str, Any], ...] = ()

    @property
    def output_id(self) -> str:
        """Deterministic id (16 hex characters): the same input always gives the same id."""
        return _short_hash(self.key)

    def as_dict(self) -> dict[str, Any]:
        """The output as its topic's JSON object (every field but ``key``, plus ``output_id``)."""
        return {
            "type": self.type,
            "name": self.name,
            "at": self.at,
            "person_id": self.person_id,
            "journey": self.journey,
            "journey_id": self.journey_id,
            "stage": self.stage,
            "channel": self.channel,
            "touchpoint": self.touchpoint,
            "event_id": self.event_id,
            "value": self.value,
            "output_id": _short_hash(self.key),
            "detail": dict(self.detail),
        }


_NO_HINTS: Final[dict[str, str]] = {}  # (never changed) a person's sessions without names

# an outcome's detail pair in scores, shared by all of them
_OUTCOMES: Final[dict[str, tuple[str, Any]]] = {
    name: ("outcome", name) for name in ("converted", "dropped_off")
}


def _segment_detail(segment: str) -> tuple[tuple[str, Any], ...]:
    """An output's ``detail.segment``: its journey's segment, when it has one."""
    return (("segment", segment),) if segment else ()


def drop_off_hold(
    definition: JourneyDefinition, channel_lateness_ms: dict[str, int], lateness_ms: int
) -> int:
    """How long a journey's drop-off waits after the watermark passes its deadline: the
    lateness of the latest channel that can move the journey on (any stage or the goal; a
    pattern without ``channel`` matches every channel), beyond the lateness itself."""
    if not channel_lateness_ms:
        return 0
    latest = 0
    patterns = [p for stage in definition.stages for p in stage.match] + list(definition.goal)
    for pattern in patterns:
        for channel in pattern.channel or channel_lateness_ms:
            latest = max(latest, channel_lateness_ms.get(channel, 0))
    return max(0, latest - lateness_ms)


def _identity_output(
    name: str, key: str, at: int, person_id: str, event_id: str, detail: tuple[Any, ...]
) -> Output:
    """An ``identity`` output (built positionally: no journey, stage, channel or value)."""
    fields = ("identity", name, key, at, person_id, None, None, None, None, None, event_id)
    return _new(Output, (*fields, None, detail))


def linked_output(identifier: str, at: int, person_id: str, event_id: str) -> Output:
    """An identifier belongs to ``person_id`` from ``at`` on (reported once per identifier and
    person: a redelivery has the same output id)."""
    key = f"linked:{identifier}:{person_id}"
    return _identity_output("linked", key, at, person_id, event_id, (("identifier", identifier),))


def blocked_output(identifier: str, at: int, person_id: str, event_id: str) -> Output:
    """An identifier seen with too many customers is no longer used to stitch (reported once)."""
    detail = (("identifier_kind", identifier.split(":", 1)[0]),)
    return _identity_output(
        "identifier_blocked", f"blocked:{identifier}", at, person_id, event_id, detail
    )


# Why a journey in saved state has no place in the current definitions: it ends ``retired``
JOURNEY_REMOVED: Final = "journey_removed"
STAGE_REMOVED: Final = "stage_removed"
STATE_VERSION: Final = 2  # a person record's first item (version 1 had none: journeys first)


class StateNames:
    """How saved state refers to journeys and stages: by name (docs/journey-engine.md,
    "Editing journeys").

    Decoding resolves a saved name against the current definitions, an earlier name through
    ``renamed_from``; state saved before names (version 1) holds positions in the file it was
    saved with, read as positions in the current one (so upgrade before editing the file). A
    journey whose journey or stage no longer resolves is retired, unless the state was saved
    under a newer journeys file (a higher ``version``: a rolling restart with an edited file, this
    worker not yet restarted): then it is kept as saved, untouched, for a worker with that file.
    ``changes`` counts, per line, what decoding did differently from the saved state (the worker
    logs it after recovery)."""

    def __init__(
        self,
        definitions: tuple[JourneyDefinition, ...],
        write_version: int = 2,
        catalog_version: int = 0,
    ) -> None:
        # version 1 written on request: the rolling restart that upgrades from a release that
        # reads nothing else (Settings.state_write_version)
        self.positions = write_version == 1
        self.catalog_version = catalog_version  # the journeys file's ``version``
        self.names: tuple[str, ...] = tuple(d.name for d in definitions)
        self.stage_names: tuple[tuple[str, ...], ...] = tuple(
            tuple(stage.name for stage in d.stages) for d in definitions
        )
        self.journey_index: dict[str, int] = {}
        self.stage_index: list[dict[str, int]] = []
        for index, definition in enumerate(definitions):
            for name in (definition.name, *definition.renamed_from):
                self.journey_index[name] = index
            stages: dict[str, int] = {}
            for position, stage in enumerate(definition.stages):
                for name in (stage.name, *stage.renamed_from):
                    stages[name] = position
            self.stage_index.append(stages)
        self.changes: dict[str, int] = {}

    def _note(self, change: str) -> None:
        self.changes[change] = self.changes.get(change, 0) + 1

    def resolve(
        self, journey: Any, stage: Any, newer: bool = False
    ) -> tuple[int, int, str, str, str]:
        """``(definition, stage, reason, journey name, stage name)`` of a saved journey; the
        positions are -1 and ``reason`` says why when it no longer resolves ("" when it does).
        ``newer``: saved under a newer journeys file (what does not resolve is kept dormant)."""
        ending = (
            "saved under a newer journeys file: kept untouched for a worker with that file"
            if newer
            else "its in-flight journeys end retired"
        )
        if isinstance(journey, int):  # version 1: positions
            if 0 <= journey < len(self.names):
                stages = self.stage_names[journey]
                if isinstance(stage, int) and 0 <= stage < len(stages):
                    return journey, stage, "", self.names[journey], stages[stage]
                self._note(
                    f"{self.names[journey]}: a stage at position {stage} (state saved "
                    f"before names) is not in the file: {ending}"
                )
                return journey, -1, STAGE_REMOVED, self.names[journey], str(stage)
            self._note(
                f"a journey at position {journey} (state saved before names) is not in "
                f"the file: {ending}"
            )
            return -1, -1, JOURNEY_REMOVED, str(journey), str(stage)
        index = self.journey_index.get(journey, -1)
        if index < 0:
            self._note(f"{journey}: not in the file: {ending}")
            return -1, -1, JOURNEY_REMOVED, journey, stage
        name = self.names[index]
        position = self.stage_index[index].get(stage, -1)
        if position < 0:
            self._note(f"{name}.{stage}: not in the file: {ending}")
            return index, -1, STAGE_REMOVED, name, stage
        now = self.stage_names[index][position]
        if name != journey or now != stage:
            self._note(f"{journey}.{stage}: continues as {name}.{now}")
        return index, position, "", name, now

    def stage_position(self, definition: int, stage: str) -> int:
        """A drop-off's stage as version 1 saves it: its position, -1 when unknown."""
        return self.stage_index[definition].get(stage, -1) if stage else -1

    def stage_name(self, definition: int, stage: Any) -> str:
        """A drop-off's stage as saved: a name, or (version 1) a position; "" when unknown."""
        if isinstance(stage, str):
            return stage
        stages = self.stage_names[definition]
        return stages[stage] if isinstance(stage, int) and 0 <= stage < len(stages) else ""


class JourneyState:
    """One journey of a person. (A plain class with its own ``__init__``, not a dataclass:
    compiled, a dataclass's generated ``__init__`` stays interpreted.)

    ``definition`` and ``stage`` are positions in the current definitions (fast to use); saved
    state names them (``StateNames``)."""

    __slots__ = (
        "active_at",
        "channel",
        "channels",
        "contacts",
        "definition",
        "dropoff_at",
        "dropoff_channel",
        "dropoff_stage",
        "dropped_at",
        "end",
        "journey_id",
        "negatives",
        "peak",
        "pending_due",
        "segment",
        "stage",
        "started_at",
        "status",
    )

    def __init__(
        self,
        journey_id: str,
        definition: int,
        stage: int,
        started_at: int,
        active_at: int,
        status: str = "active",
        dropped_at: int = 0,
        peak: float = 0.0,
        end: float = 0.0,
        channels: int = 0,
        contacts: int = 0,
        negatives: int = 0,
        channel: str = "",
        dropoff_at: int = 0,
        dropoff_stage: str = "",
        dropoff_channel: str = "",
        segment: str = "",
    ) -> None:
        self.journey_id = journey_id
        self.definition = definition
        self.stage = stage
        self.started_at = started_at
        self.active_at = active_at  # last activity that kept the journey alive
        self.status = status  # active | dropped
        self.dropped_at = dropped_at
        self.peak = peak
        self.end = end
        self.channels = channels
        self.contacts = contacts  # assisted-channel sessions (first-contact resolution)
        self.negatives = negatives
        # channel of its latest progress (labels a drop-off); one string per channel name
        self.channel = intern(channel)
        # The drop-off reported for it (0: none), with its stage (name) and channel as
        # reported: a conversion retracts exactly that drop-off (same at, stage, channel),
        # however far the journey moved after resuming, and whatever the file now calls the
        # stage. dropoff_stage "": unknown (state saved before these fields; the current stage
        # stands in).
        self.dropoff_at = dropoff_at
        self.dropoff_stage = dropoff_stage
        self.dropoff_channel = intern(dropoff_channel)
        # its segment (pipeline/segment_rules.py), decided by the touchpoint that started it,
        # never changed; "" in none. Saved as a 17th item only when set.
        self.segment = segment
        self.pending_due = 0  # earliest deadline queued for it (not persisted; re-derived)

    def to_list(self, names: StateNames) -> list[Any]:
        positions = names.positions  # version 1
        return [
            self.journey_id,
            self.definition if positions else names.names[self.definition],
            self.stage if positions else names.stage_names[self.definition][self.stage],
            self.started_at,
            self.active_at,
            self.status == "active",
            self.dropped_at,
            round(self.peak, 4),
            round(self.end, 4),
            self.channels,
            self.contacts,
            self.negatives,
            self.channel,
            self.dropoff_at,
            names.stage_position(self.definition, self.dropoff_stage)
            if positions
            else self.dropoff_stage,
            self.dropoff_channel,
            *((self.segment,) if self.segment else ()),
        ]

    @classmethod
    def from_list(
        cls, data: list[Any], names: StateNames, newer: bool = False
    ) -> JourneyState | RetiredJourney | None:
        """A saved journey (any version); ``RetiredJourney`` when its journey or stage is gone
        and it is active (dormant, kept as saved, when ``newer``: saved under a newer journeys
        file), None when it is gone and dropped off (its drop-off stands)."""
        definition, stage, reason, journey_name, stage_name = names.resolve(data[1], data[2], newer)
        if reason:
            if newer:
                return RetiredJourney("", journey_name, stage_name, data)
            if not data[5]:
                return None
            return RetiredJourney(
                reason, journey_name, stage_name, [data[0], journey_name, stage_name, *data[3:]]
            )
        if len(data) > 13:
            dropoff_at, dropoff_channel = data[13], data[15]
            dropoff_stage = names.stage_name(definition, data[14])
        elif data[6] and not data[5]:  # saved before the drop-off fields, dropped: as reported
            channel = data[12] if len(data) > 12 else ""
            dropoff_at, dropoff_stage, dropoff_channel = data[6], stage_name, channel
        else:  # saved before them, resumed (or never dropped): when, not where
            dropoff_at, dropoff_stage, dropoff_channel = data[6], "", ""
        return cls(
            data[0],
            definition,
            stage,
            data[3],
            data[4],
            "active" if data[5] else "dropped",
            data[6],
            float(data[7]),
            float(data[8]),
            data[9],
            data[10],
            data[11],
            data[12] if len(data) > 12 else "",
            dropoff_at,
            dropoff_stage,
            dropoff_channel,
            data[16] if len(data) > 16 and isinstance(data[16], str) else "",
        )


class Moment:
    """What a touchpoint means to one journey's moments, precomputed once per moment of truth
    (and once for touchpoints at none): its name and weight, the detail of the
    ``moment_of_truth`` output passed and failed, and per negative-moment kind its weighted
    intensity and its output's detail. Outputs share these tuples instead of building their
    own."""

    __slots__ = ("failed", "name", "negatives", "passed", "weight")

    def __init__(self, name: str | None, weight: float) -> None:
        self.name = name
        self.weight = weight
        self.passed: tuple[tuple[str, Any], ...] = (("passed", True), ("weight", weight))
        self.failed: tuple[tuple[str, Any], ...] = (("passed", False), ("weight", weight))
        self.negatives: dict[str, tuple[float, tuple[tuple[str, Any], ...]]] = {}
        for kind, base in NEGATIVE_INTENSITY.items():
            intensity = weighted(base, weight)
            self.negatives[kind] = (
                intensity,
                (("severity", round(intensity, 4)), ("moment_of_truth", name)),
            )


class Meaning:
    """What a touchpoint (touchpoint, action, channel, outcome) means to the definitions,
    computed once per distinct one: the (definition, stage or GOAL) pairs it matches, and per
    definition whether it is that journey's goal and its moment of truth there (None: none)."""

    __slots__ = ("goal", "matches", "moments")

    def __init__(
        self,
        matches: tuple[tuple[int, int], ...],
        goal: tuple[bool, ...],
        moments: tuple[Moment | None, ...],
    ) -> None:
        self.matches = matches
        self.goal = goal
        self.moments = moments


MEANINGS_KEPT: Final = 65_536  # distinct touchpoints remembered (then forgotten at once)


class RetiredJourney:
    """An in-flight journey whose journey or stage the definitions no longer have: it ends
    ``retired`` at its last activity (the engine queues that as a deadline), and is saved as it
    was read (by name) until then, so a restart before it fires retires it again. Dormant
    (``reason`` ""): saved under a newer journeys file than this worker's; kept as saved, no
    deadline, for a worker with that file."""

    __slots__ = ("data", "journey", "reason", "stage")

    def __init__(self, reason: str, journey: str, stage: str, data: list[Any]) -> None:
        self.reason = reason
        self.journey = journey
        self.stage = stage
        self.data = data

    @property
    def journey_id(self) -> str:
        return str(self.data[0])

    @property
    def due(self) -> int:
        return int(self.data[4])

    @property
    def dormant(self) -> bool:
        return not self.reason


class PersonState:
    """What the engine keeps of one person (see ``JourneyState`` on why not a dataclass).

    Flat fields of ints and strings rather than small tuples and lists: a person's state is
    long-lived, and every container in it is one more object for the garbage collector to scan
    (the engine's largest cost after its own work). Serialized (``to_list``) as before."""

    __slots__ = (
        "attempt_at",
        "attempt_count",
        "attempt_step",
        "catalog_version",
        "churn_due",
        "churn_flagged",
        "complaint_at",
        "contact_at",
        "contact_issue",
        "failure_at",
        "failure_channel",
        "journeys",
        "last_activity",
        "recent",
        "retired",
        "session_channel",
        "session_end",
        "session_ends",
        "session_hint",
    )

    def __init__(self) -> None:
        self.journeys: list[JourneyState] = []
        self.retired: list[RetiredJourney] | None = None  # ending ``retired`` (StateNames)
        # the journeys file version it was saved under, when newer than this worker's (it holds
        # dormant journeys: saved back under that version); 0 otherwise
        self.catalog_version = 0
        # per channel: when the session's activity ends so far (the latest end of its
        # touchpoints: occurred_at + duration_ms; ``session_at``) and its name (call id, visit
        # id), once a touchpoint gave one. (States saved before held the latest touchpoint's
        # start here: read as its end, the same thing for a touchpoint without a duration.)
        # The first channel's in fields of their own, the others' in a dict once there are
        # any, names only where there is one: most persons use one channel and name no
        # session, and a dict with an entry is 184 bytes, a tenth of a person in memory.
        self.session_channel: str | None = None
        self.session_end = 0
        self.session_ends: dict[str, int] | None = None  # the other channels', in order
        self.session_hint: dict[str, str] | None = None
        # markers of the last RECENT_IDS event ids applied, packed; serialized as ints
        self.recent = b""
        self.failure_at: int | None = None  # the last failure, when one is pending
        self.failure_channel = ""
        self.contact_at: int | None = None  # start of the last assisted contact (session)
        self.contact_issue = ""
        self.complaint_at: int | None = None
        self.attempt_step = ""  # "touchpoint/action" of the latest step, repeated how often
        self.attempt_at = 0
        self.attempt_count = 0
        self.last_activity = 0
        self.churn_flagged = False
        self.churn_due = 0  # churn deadline queued (not persisted; re-derived)

    @property
    def session_at(self) -> dict[str, int]:
        """Per channel, when its session's activity ends so far, in the order they began."""
        found: dict[str, int] = {}
        if self.session_channel is not None:
            found[self.session_channel] = self.session_end
        if self.session_ends:
            found.update(self.session_ends)
        return found

    def session_end_of(self, channel: str) -> int | None:
        """When the channel's session's activity ends so far; None before its first."""
        if channel == self.session_channel:
            return self.session_end
        ends = self.session_ends
        return None if ends is None else ends.get(channel)

    def end_session_at(self, channel: str, end: int) -> None:
        """The channel's session's activity ends at ``end`` so far."""
        first = self.session_channel
        if first is None or channel == first:
            if first is None:
                self.session_channel = intern(channel)
            self.session_end = end
            return
        ends = self.session_ends
        if ends is None:
            self.session_ends = {intern(channel): end}
        elif channel in ends:
            ends[channel] = end
        else:
            ends[intern(channel)] = end

    def name_session(self, channel: str, hint: str | None) -> None:
        """The channel's current session is named ``hint`` (None: it has no name)."""
        hints = self.session_hint
        if hint is not None:
            if hints is None:
                self.session_hint = {channel: hint}
            else:
                hints[channel] = hint
        elif hints is not None and channel in hints:
            del hints[channel]
            if not hints:
                self.session_hint = None

    def to_bytes(self, names: StateNames) -> bytes:
        return orjson.dumps(self.to_list(names))

    def to_list(self, names: StateNames) -> list[Any]:
        """Version 2: the version, the journeys file's version, then the fields; journeys by
        name (``StateNames``)."""
        hints = self.session_hint or _NO_HINTS
        journeys = [j.to_list(names) for j in self.journeys]
        if self.retired:  # (by name in version 1 too: only an edited file retires a journey)
            journeys += [r.data for r in self.retired]
        saved = [
            STATE_VERSION,
            max(names.catalog_version, self.catalog_version),
            journeys,
            {channel: [at, hints.get(channel)] for channel, at in self.session_at.items()},
            [
                int.from_bytes(self.recent[i : i + MARKER_SIZE], "little")
                for i in range(0, len(self.recent), MARKER_SIZE)
            ],
            None if self.failure_at is None else [self.failure_at, self.failure_channel],
            None if self.contact_at is None else [self.contact_at, self.contact_issue],
            self.complaint_at,
            [self.attempt_step, self.attempt_at, self.attempt_count]
            if self.attempt_count
            else None,
            self.last_activity,
            self.churn_flagged,
        ]
        return saved[2:] if names.positions else saved

    @classmethod
    def from_bytes(cls, raw: bytes, names: StateNames) -> PersonState:
        return cls.from_list(orjson.loads(raw), names)

    @classmethod
    def from_list(cls, data: list[Any], names: StateNames) -> PersonState:
        """Any saved version (1: no version item; 2: journeys by name)."""
        catalog = 0
        if data and isinstance(data[0], int):
            catalog, data = data[1], data[2:]
        newer = catalog > names.catalog_version
        state = cls()
        if newer:
            state.catalog_version = catalog
        for saved in data[0]:
            journey = JourneyState.from_list(saved, names, newer)
            if isinstance(journey, JourneyState):
                state.journeys.append(journey)
            elif journey is not None:
                if state.retired is None:
                    state.retired = []
                state.retired.append(journey)
        for channel, (at, hint) in data[1].items():
            state.end_session_at(channel, at)
            state.name_session(channel, hint)
        state.recent = _recent_bytes(data[2])
        if data[3]:
            state.failure_at, state.failure_channel = data[3]
        if data[4]:
            state.contact_at, state.contact_issue = data[4][0], data[4][1] or ""
        state.complaint_at = data[5]
        if data[6]:
            step, state.attempt_at, state.attempt_count = data[6]
            state.attempt_step = intern(step)
        state.last_activity = data[7]
        state.churn_flagged = data[8]
        return state


@dataclass
class EngineCounters:
    events: int = 0
    duplicates: int = 0
    late_events: int = 0


class JourneyEngine:
    """One engine per partition of persons. Feed it ``submit``; advance it with ``tick``."""

    def __init__(
        self,
        catalog: JourneyCatalog,
        allowed_lateness_ms: int = 60_000,
        idle_after_ms: int = 5_000,
        state_write_version: int = STATE_VERSION,
        channel_lateness_ms: dict[str, int] | None = None,
    ) -> None:
        self.catalog = catalog
        self.definitions: tuple[JourneyDefinition, ...] = catalog.journeys
        # how saved state names journeys and stages; what decoding it changed (worker's log)
        self.state_names = StateNames(self.definitions, state_write_version, catalog.version)
        # what the hot path reads of the definitions, as plain tuples
        self._names: tuple[str, ...] = self.state_names.names
        self._stage_names: tuple[tuple[str, ...], ...] = self.state_names.stage_names
        self._timeouts: tuple[tuple[int, ...], ...] = tuple(
            tuple(stage.timeout for stage in d.stages) for d in self.definitions
        )
        self._resume_within: tuple[int, ...] = tuple(d.resume_within for d in self.definitions)
        # per journey: how long a drop-off waits after the watermark passes its deadline, so
        # that touchpoints of a channel later than the lateness (a store or contact-centre
        # feed: ``channel_lateness_ms``) still reach the journey before it is reported
        self._hold: tuple[int, ...] = tuple(
            drop_off_hold(d, channel_lateness_ms or {}, allowed_lateness_ms)
            for d in self.definitions
        )
        self._holding = any(self._hold)
        self._versions: tuple[tuple[tuple[str, Any], ...], ...] = tuple(
            (("definition_version", d.version),) for d in self.definitions
        )
        self._first_contact: tuple[bool, ...] = tuple(
            d.first_contact_resolution for d in self.definitions
        )
        self.detectors = catalog.detectors
        # the detectors' thresholds as plain values (a pydantic model's attribute is a slow
        # lookup on the hot path)
        d = catalog.detectors
        self._session_gap: dict[str, int] = dict(d.session_gap)
        self._queue_waits: dict[str, int] = dict(d.queue_waits)
        self._slow_page: int = d.slow_page
        self._low_csat: int = d.low_csat_at_most
        self._nps_detractor: int = d.nps_detractor_at_most
        self._negative_sentiment: float = d.negative_sentiment_at_most
        self._repeat_contact_within: int = d.repeat_contact_within
        self._channel_switch_within: int = d.channel_switch_within
        self._repeated_attempts: int = d.repeated_attempts
        self._repeated_attempts_within: int = d.repeated_attempts_within
        self._churn_after: int = d.churn_after
        self.lateness = allowed_lateness_ms
        self.idle_after = idle_after_ms
        self.identity = IdentityGraph(max_customers=catalog.detectors.max_customers_per_identifier)
        self.persons: dict[str, PersonState] = {}
        # active journeys over all persons, kept as they change (``active_journeys``): every
        # change of a journey's status, and every person loaded, restored, taken over,
        # extracted, forgotten or merged, updates it
        self._active = 0
        # the same per definition and stage, keyed definition * _span + stage: the gauge of
        # active journeys per journey and stage
        self._active_at: dict[int, int] = {}
        self._span = 1 + max((len(d.stages) for d in catalog.journeys), default=0)
        self.counters = EngineCounters()
        self.watermark = -(2**62)
        self.max_event_time = -(2**62)  # (each touch counts at most at its received_at)
        # the watermark the input alone allows (highest event time minus the lateness, or the
        # idle advance), and the upper bound the partition's peers allow (pipeline/shard.py:
        # watermark alignment); the watermark is the lower of the two. Unbounded by default.
        self.candidate = -(2**62)
        self.bound = 2**62
        self._last_input_wall: int | None = None
        # held touches in event-time order: entries (at, event_id, seq, touch, keys). Most
        # arrive in order and go to the deque (no heap work); the others to the heap.
        self._in_order: deque[Pending] = deque()
        self._pending: list[Pending] = []
        # Deadlines as plain ints (due << SEQ_BITS | seq) in a heap: int comparisons, and no
        # tuple per heap entry. Whose each queued key is: (person, journey), journey "" for
        # the churn deadline (one dict of pairs: half the hash-table work of a dict per field;
        # a pair of strings is untracked by the garbage collector the first time it looks).
        self._deadlines: list[int] = []
        self._deadline_of: dict[int, tuple[str, str]] = {}
        # Churn deadlines (last activity + churn_after: nearly always queued in key order) go
        # to a lane of their own instead: keys and persons in two deques, no heap or dict work.
        # One queued out of order goes to the heap. Firing takes the lower key of the heap's
        # and the lane's first, so deadlines fire in exactly the order of one heap.
        self._lane_keys: deque[int] = deque()
        self._lane_persons: deque[str] = deque()
        self._seq = 0
        # held touches by identifier key (extract finds a person's touches without a scan);
        # extracted ones stay in the heap, marked by sequence number, until popped
        # (a key's one held touch as the entry itself, the common case: no list per touch;
        # a list once a second one is held)
        self._held_by_key: dict[str, Pending | list[Pending]] = {}
        self._extracted: set[int] = set()
        self.dirty: set[str] = set()  # persons changed since the adapter last saved them
        # persons ``forget`` dropped and the identifiers they owned, until the adapter looks
        self.forgotten: list[tuple[str, list[str]]] = []
        self.applied: list[str] | None = None  # event ids applied, when the adapter asks
        # the event id of the touch being applied (None between touches): when applying one
        # raises, the adapter knows which touch it was (pipeline/shard.py, the error policy)
        self.applying: str | None = None
        self.firing: str | None = None  # the person whose deadline is being fired, likewise
        # persons whose deadlines are not fired (their state raised on one: the adapter drops
        # them; streams/journeys.py, the error policy)
        self.quarantined: set[str] = set()
        self._meanings: dict[tuple[str, str, str, str], Meaning] = {}
        self._no_moment = Moment(None, 1.0)  # a touchpoint at no moment of truth

    # --- input -----------------------------------------------------------------------------
    def submit(self, touch: Touch, wall_ms: int | None = None) -> list[Output]:
        """Accept one touchpoint; returns what became final because the watermark moved."""
        self._last_input_wall = wall_ms
        self.counters.events += 1
        if touch.at < self.watermark:
            self.counters.late_events += 1
            out: list[Output] = []
            self._apply(touch, _keys(touch), out)
            return out
        self._seq += 1
        entry = (touch.at, touch.event_id, self._seq, touch, _keys(touch))
        self._queue(entry)
        latest = touch.at
        received = touch.received_at
        if received is not None and received < latest:
            latest = received  # a fast device clock does not move the watermark past ours
        if latest > self.max_event_time:
            self.max_event_time = latest
            return self._to_candidate(latest - self.lateness)
        return []

    def submit_batch(self, touches: list[Touch], wall_ms: int | None = None) -> list[Output]:
        """Accept a batch of touchpoints (one arrival); the watermark moves once, at the end."""
        self._last_input_wall = wall_ms
        self.counters.events += len(touches)
        out: list[Output] = []
        watermark, seq = self.watermark, self._seq
        latest = self.max_event_time
        for touch in touches:
            at = touch.at
            keys = [kind + ":" + value for kind, value in touch.identifiers]
            if at < watermark:
                self.counters.late_events += 1
                # (applied now: the deadlines it queues take sequence numbers too)
                self._seq = seq
                self._apply(touch, keys, out)
                seq = self._seq
                continue
            seq += 1
            self._queue((at, touch.event_id, seq, touch, keys))
            received = touch.received_at
            if received is not None and received < at:
                at = received  # (as in ``submit``)
            if at > latest:
                latest = at
        self._seq = seq
        if latest > self.max_event_time:
            self.max_event_time = latest
            out += self._to_candidate(latest - self.lateness)
        return out

    def _queue(self, entry: Pending) -> None:
        """Hold a touch until the watermark passes it, indexed by its identifier keys."""
        in_order = self._in_order
        if in_order and entry < in_order[-1]:
            heappush(self._pending, entry)
        else:
            in_order.append(entry)
        held = self._held_by_key
        for key in entry[4]:
            found = held.get(key)
            if found is None:
                held[key] = entry
            elif isinstance(found, list):
                found.append(entry)
            else:
                held[key] = [found, entry]

    def _release(self, entry: Pending) -> bool:
        """Forget a held touch taken off the queue; False when it was extracted meanwhile.
        (Entries are told apart by their sequence number, never by identity: compiled,
        a tuple is not always the same object.)"""
        if self._extracted and entry[2] in self._extracted:
            self._extracted.discard(entry[2])
            return False
        held = self._held_by_key
        for key in entry[4]:
            found = held.get(key)
            if found is not None:
                if not isinstance(found, list) or len(found) == 1:
                    del held[key]
                else:
                    found.remove(entry)
        return True

    def tick(self, wall_ms: int) -> list[Output]:
        """Advance the watermark with processing time when input has been idle."""
        if self._last_input_wall is None:
            self._last_input_wall = wall_ms
            return []
        idle = wall_ms - self._last_input_wall
        if idle < self.idle_after:
            return []
        return self._to_candidate(self.max_event_time - self.lateness + idle)

    @property
    def holds(self) -> dict[str, int]:
        """Per journey, how long its drop-offs wait for late channels (ms)."""
        return dict(zip(self._names, self._hold, strict=True))

    def reach(self, at: int) -> list[Output]:
        """Event time has reached ``at`` on this partition's input without a touchpoint
        (a backfill's end, ``journeywatch import --end-of-backfill``): the watermark moves as
        a touchpoint at ``at`` would have moved it, and the idle advance goes on from there."""
        if at <= self.max_event_time:
            return []
        self.max_event_time = at
        return self._to_candidate(at - self.lateness)

    def _to_candidate(self, candidate: int) -> list[Output]:
        """Raise the candidate watermark to ``candidate`` and advance within ``bound``."""
        if candidate > self.candidate:
            self.candidate = candidate
        return self.advance(min(self.candidate, self.bound))

    def release(self) -> list[Output]:
        """Advance as far as the candidate and the bound now allow (``bound`` was raised)."""
        return self.advance(min(self.candidate, self.bound))

    def advance(self, watermark: int) -> list[Output]:
        """Apply every held event and fire every deadline up to ``watermark``, in time order."""
        out: list[Output] = []
        if watermark <= self.watermark:
            return out
        self.watermark = watermark
        in_order, pending, deadlines = self._in_order, self._pending, self._deadlines
        lane_keys, lane_persons = self._lane_keys, self._lane_persons
        deadline_of = self._deadline_of
        while True:
            from_heap = False
            has_event = True
            next_event = 0
            if pending and (not in_order or pending[0] < in_order[0]):
                from_heap = True
                next_event = pending[0][0]
            elif in_order:
                next_event = in_order[0][0]
            else:
                has_event = False
            from_lane = False
            has_due = True
            key = 0
            if deadlines:
                key = deadlines[0]
                if lane_keys and lane_keys[0] < key:
                    key = lane_keys[0]
                    from_lane = True
            elif lane_keys:
                key = lane_keys[0]
                from_lane = True
            else:
                has_due = False
            next_due = key >> SEQ_BITS
            if has_event and next_event <= watermark and (not has_due or next_event <= next_due):
                entry = heappop(pending) if from_heap else in_order.popleft()
                if self._release(entry):
                    self._apply(entry[3], entry[4], out)
            elif has_due and next_due <= watermark:
                if from_lane:
                    lane_keys.popleft()
                    person_id = lane_persons.popleft()
                    journey_id = ""
                else:
                    heappop(deadlines)
                    person_id, journey_id = deadline_of[key]
                    del deadline_of[key]
                if self.quarantined and person_id in self.quarantined:
                    continue
                self.firing = person_id
                self._on_deadline(next_due, person_id, journey_id, out)
                self.firing = None
            else:
                return out

    def flush(self) -> list[Output]:
        """End of input: apply everything held (deadlines are left to the watermark)."""
        out: list[Output] = []
        in_order, pending = self._in_order, self._pending
        while in_order or pending:
            if pending and (not in_order or pending[0] < in_order[0]):
                entry = heappop(pending)
            else:
                entry = in_order.popleft()
            if self._release(entry):
                self._apply(entry[3], entry[4], out)
        return out

    # --- state -----------------------------------------------------------------------------
    def active_journeys(self) -> int:
        """Active journeys over all persons (kept as they change: no walk)."""
        return self._active

    def active_by_stage(self) -> dict[tuple[int, int], int]:
        """Active journeys per (definition index, stage index), those with any (kept as they
        change: no walk over the persons)."""
        return {divmod(key, self._span): count for key, count in self._active_at.items() if count}

    def _count_active(self, journey: JourneyState, change: int) -> None:
        """An active journey counted (``change`` 1) or no longer (-1), at its stage."""
        key = journey.definition * self._span + journey.stage
        self._active += change
        self._active_at[key] = self._active_at.get(key, 0) + change

    def _count_person(self, person: PersonState, change: int) -> None:
        """Every active journey of ``person`` counted (1) or no longer (-1)."""
        for journey in person.journeys:
            if journey.status == "active":
                self._count_active(journey, change)

    def _put_person(self, person_id: str, state: PersonState) -> None:
        """Hold ``state`` as ``person_id``'s (replacing what was held), counting its journeys."""
        old = self.persons.get(person_id)
        if old is not None:
            self._count_person(old, -1)
        self.persons[person_id] = state
        self._count_person(state, 1)

    def drop_person(self, person_id: str) -> None:
        """Let go of a person's state only (its identifiers and queued deadlines stay): what an
        adapter undoing a record that failed to load drops, instead of popping ``persons``
        itself (which would leave ``active_journeys`` counting its journeys)."""
        self._pop_person(person_id)

    def _pop_person(self, person_id: str) -> PersonState | None:
        """Let go of a person's state (returned), its journeys no longer counted."""
        state = self.persons.pop(person_id, None)
        if state is not None:
            self._count_person(state, -1)
        return state

    def snapshot(self) -> dict[str, bytes]:
        """Serialized state per person, for a key-value store."""
        names = self.state_names
        return {person: state.to_bytes(names) for person, state in self.persons.items()}

    def restore(self, snapshot: dict[str, bytes]) -> None:
        """Load person states and re-derive their deadlines."""
        for person, raw in snapshot.items():
            state = PersonState.from_bytes(raw, self.state_names)
            self._put_person(person, state)
            self._schedule_all(person, state)

    def _schedule_all(self, person_id: str, state: PersonState) -> None:
        """Queue every deadline of a loaded person (deadlines are not saved: re-derived)."""
        for journey in state.journeys:
            self._schedule(person_id, journey)
        if state.retired:
            for retired in state.retired:
                if not retired.dormant:
                    self._push(retired.due, person_id, retired.journey_id)
        self._schedule_churn(person_id, state)

    # --- hand-over between partitions (pipeline/shard.py) ---------------------------------------
    def person_record(self, person_id: str) -> list[Any] | None:
        """What must be kept of one person: its state and the identifiers it owns."""
        state = self.persons.get(person_id)
        members = self.identity.members.get(person_id)
        if state is None and not members:
            return None
        return [state.to_list(self.state_names) if state else None, sorted(members or ())]

    def load_person(self, person_id: str, record: list[Any]) -> None:
        """The inverse of ``person_record`` (recovery): state, identifiers and deadlines."""
        if record[0] is not None:
            state = PersonState.from_list(record[0], self.state_names)
            self._put_person(person_id, state)
            self._schedule_all(person_id, state)
        for identifier in record[1]:
            self.identity.own(identifier, person_id)

    def forget(self, person_id: str) -> list[str]:
        """Drop a person: its state and the identifiers it owns (the churn window passed, or
        it is erased). Its record is saved as a deletion; ``forgotten`` tells the adapter,
        which drops what it holds beside it. Returns the identifiers it owned."""
        self._pop_person(person_id)
        identity = self.identity
        members = identity.members.pop(person_id, ())
        for identifier in members:
            if identity.owner.get(identifier) == person_id:
                del identity.owner[identifier]
        self.dirty.add(person_id)
        self.forgotten.append((person_id, list(members)))
        return list(members)

    def drop_held(self, keys: Iterable[str]) -> list[Touch]:
        """Take out the touches held for the watermark that carry one of ``keys`` (erasure:
        never applied); returned in event-time order."""
        taken: list[Pending] = []
        by_key = self._held_by_key
        for key in keys:
            found = by_key.pop(key, None)
            if found is None:
                continue
            for entry in found if isinstance(found, list) else [found]:
                if entry[2] not in self._extracted:
                    self._extracted.add(entry[2])
                    taken.append(entry)
        for entry in taken:  # out of the other keys' too
            seq = entry[2]
            for key in entry[4]:
                held = by_key.get(key)
                if held is None:
                    continue
                if isinstance(held, list):
                    held[:] = [e for e in held if e[2] != seq]
                elif held[2] == seq:
                    del by_key[key]
        taken.sort()
        return [entry[3] for entry in taken]

    def extract(
        self, person_id: str, also: str | None = None, anchor: str | None = None
    ) -> tuple[list[Any] | None, list[str], list[Touch]]:
        """Remove a person for another partition: its record and the touches held for it
        (those carrying one of its identifiers, its ``anchor`` identifier, or ``also``). A
        person whose first touch is still held has no identifiers yet: its anchor finds it."""
        record = self.person_record(person_id)
        self._pop_person(person_id)
        members = self.identity.members.pop(person_id, ())
        for identifier in members:
            self.identity.owner.pop(identifier, None)
        wanted = set(members)
        if also:
            wanted.add(also)
        if anchor:
            wanted.add(anchor)
        taken = self.drop_held(wanted)
        self.dirty.add(person_id)
        return record, sorted(members), taken

    def absorb(
        self,
        source: str | None,
        target: str,
        record: list[Any] | None,
        identifiers: list[str],
        at: int,
        event_id: str,
    ) -> list[Output]:
        """Take over identifiers (and, when ``source`` is given, that person's state) for
        ``target``: the other half of ``extract``, with the merge reported as if stitched here."""
        out: list[Output] = []
        for identifier in identifiers:
            self.identity.own(identifier, target)
            # (given by its home partition: linked here, as ``resolve_keys`` links it in one
            # process; a hand-off delivered again reports the same output id)
            out.append(linked_output(identifier, at, target, event_id))
        self.dirty.add(target)
        if source is None or source == target:
            return out
        if record is not None and record[0] is not None:
            if source in self.persons:  # handed over twice: keep what is here
                return out
            self._put_person(source, PersonState.from_list(record[0], self.state_names))
        self._merge_person(source, target, at, event_id, out)
        return out

    def has(self, person_id: str, key: str) -> bool:
        """Whether ``person_id`` has state here or a touch carrying ``key`` is held here."""
        return person_id in self.persons or bool(self._held_by_key.get(key))

    def has_applied(self, person_id: str, event_id: str) -> bool:
        """Whether ``person_id`` recently applied ``event_id`` (a redelivered hand-off)."""
        person = self.persons.get(person_id)
        return person is not None and _seen(person.recent, _marker(event_id))

    def apply_now(self, touches: list[Touch]) -> list[Output]:
        """Apply touches at once, in event-time order (touches handed over by another
        partition: they were held there already)."""
        out: list[Output] = []
        self.counters.events += len(touches)
        for touch in sorted(touches, key=lambda t: (t.at, t.event_id)):
            self._apply(touch, _keys(touch), out)
        return out

    # --- matching ---------------------------------------------------------------------------
    def _compute_matches(
        self, touchpoint: str, action: str, channel: str, outcome: str
    ) -> tuple[tuple[int, int], ...]:
        found = []
        for index, definition in enumerate(self.definitions):
            if _any(definition.goal, touchpoint, action, channel, outcome):
                found.append((index, GOAL))
                continue
            for stage_index in range(len(definition.stages) - 1, -1, -1):
                stage = definition.stages[stage_index]
                if _any(stage.match, touchpoint, action, channel, outcome):
                    found.append((index, stage_index))
                    break
        return tuple(found)

    def _meaning(self, key: tuple[str, str, str, str]) -> Meaning:
        """Compute and remember what a touchpoint means (``Meaning``)."""
        touchpoint, action, channel, outcome = key
        matches = self._compute_matches(touchpoint, action, channel, outcome)
        goals = {index for index, stage in matches if stage == GOAL}
        meaning = Meaning(
            matches,
            tuple(index in goals for index in range(len(self.definitions))),
            tuple(
                self._compute_mot(index, touchpoint, action, channel, outcome)
                for index in range(len(self.definitions))
            ),
        )
        if len(self._meanings) >= MEANINGS_KEPT:
            self._meanings.clear()
        self._meanings[key] = meaning
        return meaning

    def _compute_mot(
        self, definition: int, touchpoint: str, action: str, channel: str, outcome: str
    ) -> Moment | None:
        for mot in self.definitions[definition].moments_of_truth:
            if _any(mot.match, touchpoint, action, channel, outcome):
                return Moment(mot.name, mot.weight)
        return None

    # --- applying one touch ----------------------------------------------------------------------
    def _apply(self, touch: Touch, keys: list[str], out: list[Output]) -> None:
        self.applying = touch.event_id
        self._apply_touch(touch, keys, out)
        self.applying = None

    def _apply_touch(self, touch: Touch, keys: list[str], out: list[Output]) -> None:
        if self.applied is not None:
            self.applied.append(touch.event_id)
        identity = self.identity
        settled = identity.settled(keys)
        if settled is not None:  # the common case: nothing to link
            person_id = settled
            self.dirty.add(person_id)
        else:
            resolution = identity.resolve_keys(keys)
            person_id = resolution.person_id
            self.dirty.add(person_id)
            if self._holding and resolution.merged:
                self._overdue_of(person_id, touch.at, out)
            for source in resolution.merged:
                if self._holding:
                    self._overdue_of(source, touch.at, out)
                self._merge_person(source, person_id, touch.at, touch.event_id, out)
            for identifier in resolution.blocked:
                out.append(blocked_output(identifier, touch.at, person_id, touch.event_id))
            for identifier in resolution.linked:
                out.append(linked_output(identifier, touch.at, person_id, touch.event_id))
        person = self.persons.get(person_id)
        if person is None:
            person = self.persons[person_id] = PersonState()
        elif self._holding:
            self._overdue(person_id, person, touch.at, out)
        marker = _marker(touch.event_id)
        recent = person.recent
        if _seen(recent, marker):
            self.counters.duplicates += 1
            return
        if len(recent) >= RECENT_IDS * MARKER_SIZE:
            recent = recent[MARKER_SIZE:]
        person.recent = recent + marker
        new_session = self._session(person, touch)
        negatives = self._negative_kinds(person, touch, new_session)
        key = (touch.touchpoint, touch.action, touch.channel, touch.outcome)
        meaning = self._meanings.get(key)
        if meaning is None:
            meaning = self._meaning(key)
        touched = self._progress(person_id, person, touch, meaning, new_session, negatives, out)
        self._kpis(person_id, person, touch, touched, out)
        person.last_activity = max(person.last_activity, touch.at)
        person.churn_flagged = False
        self._schedule_churn(person_id, person)

    def _session(self, person: PersonState, touch: Touch) -> bool:
        """Whether ``touch`` starts a new session (contact) on its channel.

        A session spans from its first touchpoint to the end of its last (``duration_ms``, or
        ``wait_ms`` when longer: a queue touchpoint stamped when the wait began), however long:
        the channel's gap is measured from that end. A call id or a visit id
        (``session_hint``) names it: the same name continues it at any distance, another name
        starts a new one; a touchpoint without a name (or a named one in a session that had
        none yet) continues it within the gap and starts a new one after it."""
        channel = touch.channel
        at = touch.at
        spent = touch.duration_ms or 0
        wait = touch.wait_ms
        if wait is not None and wait > spent:
            spent = wait
        end = at + spent
        hint = touch.session_hint or None
        last_end = person.session_end_of(channel)
        if last_end is None:
            person.end_session_at(channel, end)
            person.name_session(channel, hint)
            return True
        hints = person.session_hint
        current = None if hints is None else hints.get(channel)
        if hint is not None and current is not None:
            new = hint != current
        else:
            new = at - last_end > self._session_gap.get(channel, SESSION_GAP_MS)
        if new:
            # A late touchpoint (older than what this person did since: touchpoints are
            # applied in event-time order unless late) of an earlier session leaves the
            # current session as it is.
            if at >= person.last_activity:
                person.end_session_at(channel, end)
                person.name_session(channel, hint)
        else:
            if end > last_end:
                person.end_session_at(channel, end)
            if current is None and hint is not None:
                person.name_session(channel, hint)
        return new

    def _negative_kinds(self, person: PersonState, touch: Touch, new_session: bool) -> list[str]:
        kinds: list[str] = []
        outcome = touch.outcome
        channel = touch.channel
        action = touch.action
        failed = outcome != "ok"
        if failed:
            if outcome == "error":
                kinds.append("error")
            elif outcome == "abandoned":
                queue = channel == "call_center" and touch.touchpoint.startswith("queue.")
                kinds.append("call_abandoned" if queue else "abandoned")
        wait = touch.wait_ms
        if wait is not None:
            limit = self._queue_waits.get(channel)
            if limit is not None and wait > limit:
                kinds.append("long_wait")
        duration = touch.duration_ms
        if (
            duration is not None
            and (channel == "web" or channel == "app")
            and (action == "view" and duration > self._slow_page)
        ):
            kinds.append("slow_page")
        csat = touch.csat
        if csat is not None and csat <= self._low_csat:
            kinds.append("low_csat")
        nps = touch.nps
        if nps is not None and nps <= self._nps_detractor:
            kinds.append("nps_detractor")
        sentiment = touch.sentiment
        if sentiment is not None and sentiment <= self._negative_sentiment:
            kinds.append("negative_sentiment")
        if action == "complain" or touch.touchpoint.endswith(".complaint"):
            kinds.append("complaint")
        if action == "transfer":
            kinds.append("transfer")
        if new_session and channel in ASSISTED:
            # judged once per contact, at its first touchpoint (_session: a contact is one
            # session however long it lasts)
            issue = touch.issue or ""
            contact_at = person.contact_at
            if (
                contact_at is not None
                and 0 < touch.at - contact_at <= self._repeat_contact_within
                and (not issue or not person.contact_issue or issue == person.contact_issue)
            ):
                kinds.append("repeat_contact")
            if contact_at is None or touch.at >= contact_at:  # not a late, older contact
                person.contact_at = touch.at
                person.contact_issue = issue
        failed_at = person.failure_at
        if (
            failed_at is not None
            and person.failure_channel != touch.channel
            and 0 <= touch.at - failed_at <= self._channel_switch_within
        ):
            kinds.append("channel_switch_after_failure")
            person.failure_at = None
        if failed:
            person.failure_at = touch.at
            person.failure_channel = touch.channel
        step = f"{touch.touchpoint}/{touch.action}"
        if (
            person.attempt_count
            and person.attempt_step == step
            and touch.at - person.attempt_at <= self._repeated_attempts_within
        ):
            person.attempt_count += 1
            if person.attempt_count == self._repeated_attempts:
                kinds.append("repeated_attempts")
        else:
            person.attempt_step = intern(step)  # (one string for all persons at that step)
            person.attempt_at = touch.at
            person.attempt_count = 1
        return kinds

    def _progress(
        self,
        person_id: str,
        person: PersonState,
        touch: Touch,
        meaning: Meaning,
        new_session: bool,
        negatives: list[str],
        out: list[Output],
    ) -> list[JourneyState]:
        touched: list[JourneyState] = []
        for definition_index, stage_index in meaning.matches:
            journey = self._journey_for(person, definition_index, touch.at)
            if journey is None:
                if stage_index == GOAL:
                    continue  # a goal without a journey before it starts nothing
                journey = JourneyState(
                    f"{_id_hash(self._names[definition_index] + ':' + touch.event_id):016x}",
                    definition_index,
                    stage_index,
                    touch.at,
                    touch.at,
                )
                if touch.segment:
                    journey.segment = touch.segment
                person.journeys.append(journey)
                self._count_active(journey, 1)
                self._journey_out("started", person_id, journey, touch, out)
            elif journey.status == "dropped":
                journey.status = "active"
                self._count_active(journey, 1)
                self._journey_out("resumed", person_id, journey, touch, out)
            if stage_index != GOAL and stage_index > journey.stage:
                self._count_active(journey, -1)  # (active here: started, resumed or was)
                journey.stage = stage_index
                self._count_active(journey, 1)
                self._journey_out("stage_reached", person_id, journey, touch, out)
            if touch.at >= journey.active_at and journey.channel != touch.channel:
                journey.channel = intern(touch.channel)  # (one string per channel name)
            journey.active_at = max(journey.active_at, touch.at)
            journey.channels |= CHANNEL_BIT.get(touch.channel, 0)
            # once per contact: at its first touchpoint, or at the first of its touchpoints that
            # this journey sees (a journey that a contact started part-way has had none yet)
            if touch.channel in ASSISTED and (new_session or not journey.contacts):
                journey.contacts += 1
            touched.append(journey)
        if not touched and negatives:
            latest = max(person.journeys, key=lambda j: j.active_at, default=None)
            if latest is not None and latest.status == "active":
                touched.append(latest)
            else:  # outside any journey: still a negative moment of this person
                for kind in negatives:
                    intensity = NEGATIVE_INTENSITY[kind]
                    out.append(
                        _new(
                            Output,
                            (
                                "negative_moment",
                                kind,
                                f"negative_moment:{kind}:{person_id}:{touch.event_id}",
                                touch.at,
                                person_id,
                                None,
                                None,
                                None,
                                touch.channel,
                                touch.touchpoint,
                                touch.event_id,
                                -intensity,
                                (("severity", intensity), ("moment_of_truth", None)),
                            ),
                        )
                    )
        if touch.csat is None and touch.nps is None and touch.sentiment is None:
            value = 0.0
        else:
            value = positive_value(touch.csat, touch.nps, touch.sentiment)
        for journey in touched:
            mot = meaning.moments[journey.definition]
            moment = mot if mot is not None else self._no_moment
            journey_value = value
            for kind in negatives:
                intensity, detail = moment.negatives[kind]
                journey_value = more_intense(journey_value, -intensity)
                journey.negatives += 1
                self._emit(
                    out, "negative_moment", kind, person_id, journey, touch, -intensity, detail
                )
            if mot is not None:
                self._emit(
                    out,
                    "moment_of_truth",
                    mot.name or "",
                    person_id,
                    journey,
                    touch,
                    None,
                    mot.failed if negatives else mot.passed,
                )
            goal = meaning.goal[journey.definition] and journey.status == "active"
            if goal:
                journey_value = more_intense(journey_value, GOAL_VALUE)
            if journey_value:
                journey.peak = more_intense(journey.peak, journey_value)
            journey.end = journey_value
            if goal:
                self._convert(person_id, person, journey, touch, out)
            else:
                self._schedule(person_id, journey)
        return touched

    def _journey_for(
        self, person: PersonState, definition_index: int, at: int
    ) -> JourneyState | None:
        for journey in person.journeys:
            if journey.definition != definition_index:
                continue
            if (
                journey.status == "active"
                or at - journey.dropped_at <= self._resume_within[definition_index]
            ):
                return journey
        return None

    def _convert(
        self,
        person_id: str,
        person: PersonState,
        journey: JourneyState,
        touch: Touch,
        out: list[Output],
    ) -> None:
        if journey.dropoff_at:
            # Its drop-off was reported, then touchpoints within resume_within converted it:
            # one revision, with the drop-off's own at, stage and channel (so the per-minute
            # rollups net it out in the key it was counted in) and the drop-off's output_id
            # (so the sink deletes exactly that row). Key per journey: emitted once.
            index = journey.definition
            stage = journey.dropoff_stage or self._stage_names[index][journey.stage]
            out.append(
                _new(
                    Output,
                    (
                        "journey",
                        "dropoff_retracted",
                        f"dropoff_retracted:{journey.journey_id}",
                        journey.dropoff_at,
                        person_id,
                        self._names[index],
                        journey.journey_id,
                        stage,
                        journey.dropoff_channel or None,
                        None,
                        touch.event_id,
                        None,
                        (
                            ("retracts", _short_hash(f"dropped_off:{journey.journey_id}")),
                            ("converted_at", touch.at),
                            ("converted_event_id", touch.event_id),
                            *_segment_detail(journey.segment),
                        ),
                    ),
                )
            )
        self._journey_out("converted", person_id, journey, touch, out)
        seconds = (touch.at - journey.started_at) / 1000
        self._emit(out, "kpi", "conversion", person_id, journey, touch, seconds, ())
        if self._first_contact[journey.definition]:
            self._emit(
                out,
                "kpi",
                "first_contact_resolution",
                person_id,
                journey,
                touch,
                1.0 if journey.contacts <= 1 else 0.0,
                (("contacts", journey.contacts),),
            )
        self._score(person_id, journey, touch.at, "converted", out)
        person.journeys.remove(journey)
        self._count_active(journey, -1)  # (an active journey: only an active one converts)

    def _due(self, journey: JourneyState) -> int:
        """When the journey's deadline fires: an active journey's drop-off deadline plus the
        journey's hold; a dropped one's end of ``resume_within``."""
        index = journey.definition
        if journey.status == "active":
            return journey.active_at + self._timeouts[index][journey.stage] + self._hold[index]
        return journey.dropped_at + self._resume_within[index]

    def _overdue_of(self, person_id: str, at: int, out: list[Output]) -> None:
        person = self.persons.get(person_id)
        if person is not None:
            self._overdue(person_id, person, at, out)

    def _overdue(self, person_id: str, person: PersonState, at: int, out: list[Output]) -> None:
        """Before a touchpoint at ``at`` is applied: drop off the person's journeys whose
        deadline lies before it but has not fired, held for a late channel (``_hold``). In
        event time the deadline came first, as it does without a hold."""
        for journey in person.journeys:
            if journey.status != "active":
                continue
            index = journey.definition
            if not self._hold[index]:
                continue
            deadline = journey.active_at + self._timeouts[index][journey.stage]
            if at > deadline:
                self._drop(person_id, journey, deadline, out)

    def _schedule(self, person_id: str, journey: JourneyState) -> None:
        """Queue the journey's deadline, unless an earlier one is queued already: that one,
        when it fires, finds the journey still alive and queues the real deadline. This keeps
        one queue entry per journey instead of one per touchpoint."""
        due = self._due(journey)
        if journey.pending_due and journey.pending_due <= due:
            return
        journey.pending_due = due
        self._push(due, person_id, journey.journey_id)

    def _schedule_churn(self, person_id: str, person: PersonState) -> None:
        if not person.churn_due:
            due = person.churn_due = person.last_activity + self._churn_after
            key = self._key(due)
            lane = self._lane_keys
            if not lane or key > lane[-1]:
                lane.append(key)
                self._lane_persons.append(person_id)
            else:  # out of key order: in the heap
                self._queue_key(key, person_id, "")

    def _push(self, due: int, person_id: str, journey_id: str) -> None:
        self._queue_key(self._key(due), person_id, journey_id)

    def _key(self, due: int) -> int:
        """A deadline's queue key: its time, then the order it was queued in."""
        self._seq += 1
        return due << SEQ_BITS | (self._seq & SEQ_MASK)

    def _queue_key(self, key: int, person_id: str, journey_id: str) -> None:
        """Queue a deadline in the heap (journey "": the person's churn deadline)."""
        self._deadline_of[key] = (person_id, journey_id)
        heappush(self._deadlines, key)

    def _on_deadline(self, due: int, person_id: str, journey_id: str, out: list[Output]) -> None:
        person = self.persons.get(person_id)
        if person is None:
            return
        self.dirty.add(person_id)
        if not journey_id:
            self._on_churn_deadline(due, person_id, person, out)
            return
        journey = next((j for j in person.journeys if j.journey_id == journey_id), None)
        if journey is None:
            if person.retired:
                self._retire(due, person_id, person, journey_id, out)
            return
        if journey.pending_due == due:
            journey.pending_due = 0
        expected = self._due(journey)
        if expected != due:  # superseded by later activity
            if expected > due and not journey.pending_due:
                self._schedule(person_id, journey)
            return
        if journey.status == "active":
            self._drop(person_id, journey, due - self._hold[journey.definition], out)
        else:
            person.journeys.remove(journey)  # no longer resumable: forget it

    def _drop(self, person_id: str, journey: JourneyState, due: int, out: list[Output]) -> None:
        """The journey passed its stage's deadline ``due``: dropped (reported once per journey)."""
        index = journey.definition
        definition = self.definitions[index]  # (raises for a journey the catalog lacks)
        journey_id = journey.journey_id
        if journey.status == "active":
            self._count_active(journey, -1)
        journey.status = "dropped"
        journey.dropped_at = due
        self._schedule(person_id, journey)
        if journey.dropoff_at:
            return  # resumed, then stalled again: a drop-off is reported once per journey
        stage = self._stage_names[index][journey.stage]
        journey.dropoff_at = due
        journey.dropoff_stage = stage
        journey.dropoff_channel = journey.channel
        out.append(
            _new(
                Output,
                (
                    "journey",
                    "dropped_off",
                    f"dropped_off:{journey_id}",
                    due,
                    person_id,
                    definition.name,
                    journey_id,
                    stage,
                    journey.channel or None,
                    None,
                    None,
                    None,
                    (
                        ("negative_moments", journey.negatives),
                        self._versions[index][0],
                        *_segment_detail(journey.segment),
                    ),
                ),
            )
        )
        self._score(person_id, journey, due, "dropped_off", out)

    def _retire(
        self, due: int, person_id: str, person: PersonState, journey_id: str, out: list[Output]
    ) -> None:
        """End an in-flight journey the definitions no longer have (``RetiredJourney``): not a
        drop-off (nobody stopped), an outcome of its own, at its last activity."""
        retired = person.retired or []
        found = next((r for r in retired if r.journey_id == journey_id), None)
        if found is None or found.due != due:
            return
        retired.remove(found)
        if not retired:
            person.retired = None
        data = found.data
        out.append(
            _new(
                Output,
                (
                    "journey",
                    "retired",
                    f"retired:{journey_id}",
                    due,
                    person_id,
                    found.journey,
                    journey_id,
                    found.stage,
                    data[12] if len(data) > 12 and data[12] else None,
                    None,
                    None,
                    None,
                    (
                        ("reason", found.reason),
                        ("negative_moments", data[11]),
                        *_segment_detail(
                            data[16] if len(data) > 16 and isinstance(data[16], str) else ""
                        ),
                    ),
                ),
            )
        )

    def _on_churn_deadline(
        self, due: int, person_id: str, person: PersonState, out: list[Output]
    ) -> None:
        if person.churn_due == due:
            person.churn_due = 0
        expected = person.last_activity + self._churn_after
        if expected != due:
            if expected > due:
                self._schedule_churn(person_id, person)
            return
        if person.churn_flagged:
            return
        if person_id.startswith("c:"):
            person.churn_flagged = True
            out.append(
                Output(
                    "kpi",
                    "churn_risk",
                    f"churn:{person_id}:{due}",
                    due,
                    person_id,
                    value=self._churn_after / 86_400_000,
                )
            )
        if not person.journeys:
            # The person leaves the worker state, identifiers included (their record is saved
            # as a deletion): a later touchpoint with one of them starts a new person.
            self.forget(person_id)

    def _merge_person(
        self, source: str, target: str, at: int, event_id: str, out: list[Output]
    ) -> None:
        moved = self._pop_person(source)
        self.dirty.add(source)
        self.dirty.add(target)
        detail = (("from_person", source),)
        key = f"merged:{source}:{target}"
        out.append(_identity_output("merged", key, at, target, event_id, detail))
        if moved is None:
            return
        # Queued deadlines name the old person id: queue them again under the new one.
        moved.churn_due = 0
        for journey in moved.journeys:
            journey.pending_due = 0
        if moved.retired:
            for retired in moved.retired:
                if not retired.dormant:
                    self._push(retired.due, target, retired.journey_id)
        person = self.persons.get(target)
        if person is None:
            self._put_person(target, moved)
            person = moved
        else:
            self._count_person(person, -1)
            if moved.retired:
                person.retired = (person.retired or []) + moved.retired
                person.catalog_version = max(person.catalog_version, moved.catalog_version)
            person.recent = (person.recent + moved.recent)[-RECENT_IDS * MARKER_SIZE :]
            person.last_activity = max(person.last_activity, moved.last_activity)
            for journey in moved.journeys:
                existing = next(
                    (j for j in person.journeys if j.definition == journey.definition), None
                )
                if existing is None:
                    person.journeys.append(journey)
                    continue
                if existing.journey_id == journey.journey_id:
                    continue  # handed over twice (a retried hand-off): already here
                keep, gone = (
                    (existing, journey)
                    if existing.started_at <= journey.started_at
                    else (journey, existing)
                )
                if gone.active_at > keep.active_at:
                    keep.end = gone.end
                if gone.status == "active":
                    keep.status = "active"
                keep.stage = max(keep.stage, gone.stage)
                keep.active_at = max(keep.active_at, gone.active_at)
                keep.channels |= gone.channels
                keep.contacts += gone.contacts
                keep.negatives += gone.negatives
                keep.peak = more_intense(keep.peak, gone.peak)
                if keep is journey:
                    person.journeys.remove(existing)
                    person.journeys.append(journey)
                out.append(
                    _new(
                        Output,
                        (
                            "journey",
                            "merged",
                            f"merged:{gone.journey_id}",
                            at,
                            target,
                            self._names[gone.definition],
                            gone.journey_id,
                            None,
                            None,
                            None,
                            None,
                            None,
                            (("into_journey_id", keep.journey_id),),
                        ),
                    )
                )
            self._count_person(person, 1)
        for journey in person.journeys:
            self._schedule(target, journey)
        self._schedule_churn(target, person)

    # --- outputs ------------------------------------------------------------------------------
    def _journey_out(
        self, name: str, person_id: str, journey: JourneyState, touch: Touch, out: list[Output]
    ) -> None:
        key = f"{name}:{journey.journey_id}:{touch.event_id}"
        detail = self._versions[journey.definition]
        self._output(out, "journey", name, key, person_id, journey, touch, None, detail)

    def _emit(
        self,
        out: list[Output],
        type_: str,
        name: str,
        person_id: str,
        journey: JourneyState,
        touch: Touch,
        value: float | None,
        detail: tuple[tuple[str, Any], ...],
    ) -> None:
        key = f"{type_}:{name}:{journey.journey_id}:{touch.event_id}"
        self._output(out, type_, name, key, person_id, journey, touch, value, detail)

    def _output(
        self,
        out: list[Output],
        type_: str,
        name: str,
        key: str,
        person_id: str,
        journey: JourneyState,
        touch: Touch,
        value: float | None,
        detail: tuple[tuple[str, Any], ...],
    ) -> None:
        """An output about ``journey`` caused by ``touch`` (``key`` makes its output_id)."""
        index = journey.definition
        out.append(
            _new(
                Output,
                (
                    type_,
                    name,
                    key,
                    touch.at,
                    person_id,
                    self._names[index],
                    journey.journey_id,
                    self._stage_names[index][journey.stage],
                    touch.channel,
                    touch.touchpoint,
                    touch.event_id,
                    value,
                    detail + _segment_detail(journey.segment) if journey.segment else detail,
                ),
            )
        )

    def _score(
        self, person_id: str, journey: JourneyState, at: int, outcome: str, out: list[Output]
    ) -> None:
        index = journey.definition
        out.append(
            _new(
                Output,
                (
                    "score",
                    "peak_end",
                    f"score:{journey.journey_id}:{outcome}",
                    at,
                    person_id,
                    self._names[index],
                    journey.journey_id,
                    self._stage_names[index][journey.stage],
                    None,
                    None,
                    None,
                    peak_end_score(journey.peak, journey.end),
                    (
                        _OUTCOMES.get(outcome) or ("outcome", outcome),
                        ("peak", round(journey.peak, 4)),
                        ("end", round(journey.end, 4)),
                        *_segment_detail(journey.segment),
                    ),
                ),
            )
        )

    def _kpis(
        self,
        person_id: str,
        person: PersonState,
        touch: Touch,
        touched: list[JourneyState],
        out: list[Output],
    ) -> None:
        complaint = touch.action == "complain" or touch.touchpoint.endswith(".complaint")
        if (
            touch.csat is None
            and touch.nps is None
            and touch.revenue is None
            and not complaint
            and person.complaint_at is None
        ):
            return  # the common case: nothing to measure
        journey = touched[0] if touched else None
        context = (
            (self._names[journey.definition], journey.journey_id, journey.segment)
            if journey
            else (None, None, "")
        )
        if touch.csat is not None:
            self._kpi(out, "csat", float(touch.csat), person_id, touch, context)
        if touch.nps is not None:
            category = (
                "promoter" if touch.nps >= 9 else "passive" if touch.nps >= 7 else "detractor"
            )
            self._kpi(
                out, "nps", float(touch.nps), person_id, touch, context, (("category", category),)
            )
        if touch.revenue is not None and person_id.startswith("c:"):
            detail = (("currency", touch.currency),)
            self._kpi(out, "ltv_increment", touch.revenue, person_id, touch, context, detail)
        if complaint:
            if person.complaint_at is None:
                person.complaint_at = touch.at
        elif (
            person.complaint_at is not None
            and touch.channel in _RESPONDING
            and (touch.action in ("respond", "resolve") or touch.touchpoint.startswith("agent."))
        ):
            seconds = (touch.at - person.complaint_at) / 1000
            self._kpi(out, "complaint_response", seconds, person_id, touch, context)
            person.complaint_at = None

    @staticmethod
    def _kpi(
        out: list[Output],
        name: str,
        value: float,
        person_id: str,
        touch: Touch,
        context: tuple[str | None, str | None, str],
        detail: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        out.append(
            _new(
                Output,
                (
                    "kpi",
                    name,
                    f"kpi:{name}:{touch.event_id}",
                    touch.at,
                    person_id,
                    context[0],
                    context[1],
                    None,
                    touch.channel,
                    touch.touchpoint,
                    touch.event_id,
                    value,
                    detail + _segment_detail(context[2]) if context[2] else detail,
                ),
            )
        )


def _any(
    patterns: tuple[Pattern, ...], touchpoint: str, action: str, channel: str, outcome: str
) -> bool:
    return any(p.matches(touchpoint, action, channel, outcome) for p in patterns)
