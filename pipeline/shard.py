"""One partition of the journey engine, stitching identities across partitions.

The stream is partitioned by identifier (``touchpoints.by_person`` is keyed by the strongest
identifier of each event). A person lives in the partition of its *anchor*: the customer id of a
known customer (``c:<id>`` → ``customer_id:<id>``), the first identifier of an anonymous one
(``a:device_id:d1`` → ``device_id:d1``). Every identifier has a *home*, the partition its key
hashes to; the home is the authority on whom the identifier belongs to.

Identities are stitched across partitions with four messages on the hand-off topic, each keyed so
that it reaches the partition that must act on it:

* ``forward``: a touchpoint keyed by an identifier that now belongs to a person anchored
  elsewhere goes on to that person's partition.
* ``link``: a person's touchpoint carries an identifier whose home is another partition (and that
  this partition does not know yet): the home is asked to link it. The touchpoint travels with the
  request, and later touchpoints of that person wait (are *parked*) until the answer arrives, so
  the person's touchpoints are still applied in order.
* ``handoff``: the answer, to the person's partition: the identifier is now the person's; if an
  anonymous person owned it, that person's state, identifiers and held touchpoints come along
  and are merged in, reported as the same ``merged`` outputs as in one process. An identifier
  that belongs to another customer comes back as *foreign* (and may get blocked: over-merge
  protection, decided by its home).
* ``redirect``: the identifier belongs to a known customer and the asking person is anonymous:
  the anonymous person moves to the customer (its partition sends the ``handoff``).

A fifth message, ``frontier``, keeps the partitions' watermarks aligned: each partition tells
every other one (by explicit partition, not by key) the earliest event time it may still send
(its *frontier*: its candidate watermark, the touches it holds outside its engine and those it
has sent and not yet seen absorbed) and which of its hand-off input records it has absorbed; a
partition's engine watermark never passes its peers' last frontiers, so a touch parked for a
link or forwarded from another partition is never passed while in flight
(docs/streaming-topology.md, "Time", has the argument and what it does not cover).

Everything here is pure and deterministic; an adapter (streams/journeys.py) delivers the messages,
saves the changed records and acknowledges input. ``drain`` says what to do, in order: deliver
``outputs``, save ``records`` (the sends among them, in the outbox), deliver ``sends`` and then
``notices`` (the frontiers), tell ``produced`` the offsets the sends were written at, then
acknowledge ``done``. At-least-once: a crash anywhere replays input, which the engine recognises
by event id, and every output carries a deterministic id; a message leaves only once the state
that decided it is saved, so a replay never decides otherwise after the message has acted, and
a restart sends again what the outbox holds. (With ``outbox=False``, ``Step.saved_first``
false: the sends are delivered with the outputs, before the records are saved, as released
workers do.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from random import getrandbits
from typing import Any, Final, NamedTuple

from pipeline.codec import (
    FinishedRecord,
    Forward,
    Frontier,
    Handoff,
    IdentifierRecord,
    Link,
    OutboxRecord,
    PersonRecord,
    Redirect,
    decode_message,
    decode_record,
    encode_message,
    encode_record,
)
from pipeline.engine import JourneyEngine, Output, blocked_output
from pipeline.touch import Touch

CUSTOMER_PREFIX = "customer_id:"
MAX_HOPS = 16
# Event ids of the latest touchpoints read from this partition's input, with the person each went
# to: read again (a duplicate record: a client's retry, an ingest replay), one goes there too.
RECENT_INPUTS: Final = 100_000
# A hand-off message's identity, the last field of the JSON object the outbox saves and sends:
# ``,"n":"<16 hex digits>"}`` (readers of any version ignore a field they do not know).
_NONCE: Final = b'"n":"'
_NONCE_TAIL: Final = 18  # 16 hex digits, '"}'
_NONCE_END: Final = _NONCE_TAIL + len(_NONCE)
NEVER: Final = -(2**62)  # an event time before any other (the watermark of a new engine)
# How far (event time) this partition's own candidate may run ahead of where it stood when an
# idle peer's unlimited frontier came, beyond the wall-clock time since, before that peer is
# asked again (``_recheck_quiet``): live input moves event time with the wall clock, an
# import or a backlog far faster.
QUIET_SLACK_MS: Final = 2_000
FOREVER: Final = 2**62  # an event time after any other (no bound)
# Hand-off messages and state records are typed and versioned in pipeline/codec.py (a touch
# travels as its first 17 fields, which every version reads, its ``received_at`` beside them).
Carrying = Forward | Link | Redirect | Handoff  # the messages that carry touches


class Step(NamedTuple):
    outputs: list[Output]
    sends: list[tuple[str, bytes]]  # (key, value) for the hand-off topic
    records: dict[str, bytes | None]  # state records to save (None: delete)
    done: list[Any]  # input tokens that may be acknowledged once the rest is done
    # (partition, value) for the hand-off topic, after ``sends``: frontiers (watermark alignment)
    notices: list[tuple[int, bytes]]
    # the sends are in ``records`` (the outbox): save the records *before* sending them
    saved_first: bool = False


class _Sent:
    """A hand-off message sent to another partition and not yet known to be absorbed there
    (its touches submitted to the engine, or gone on from there and absorbed further on)."""

    def __init__(self, to: int, at: int, inputs: list[int]) -> None:
        self.to = to
        self.at = at  # the earliest event time of the touches it carries
        self.offset = -1  # in the destination's hand-off partition, once produced (an upper bound)
        self.inputs = inputs  # offsets of this partition's hand-off input waiting for it


class _Join:
    """The input token of a message carrying several touches (a ``handoff``): it may be
    acknowledged only once every one of them is applied here or has left in a message, not when
    the first (or the latest) of them does. Each touch's entry in ``JourneyShard._tokens`` holds
    the same join; ``left`` counts the touches still waiting."""

    def __init__(self, token: Any, left: int) -> None:
        self.token = token
        self.left = left


def anchor_key(person_id: str) -> str:
    """The identifier key whose partition a person lives in."""
    if person_id.startswith("c:"):
        return CUSTOMER_PREFIX + person_id[2:]
    return person_id[2:]


def _keys(touch: Touch) -> list[str]:
    return [kind + ":" + value for kind, value in touch.identifiers]


def _customer_of(keys: list[str]) -> str | None:
    """The customer a touch carrying ``keys`` belongs to, when it names one."""
    for key in keys:
        if key.startswith(CUSTOMER_PREFIX):
            return "c:" + key[len(CUSTOMER_PREFIX) :]
    return None


def _carried(message: Carrying) -> list[Touch]:
    """The touches a hand-off message carries (a ``handoff`` at least one, the others one)."""
    return message.touches if isinstance(message, Handoff) else [message.touch]


class JourneyShard:
    """The engine of one partition plus the identity hand-off protocol."""

    def __init__(
        self,
        engine: JourneyEngine,
        partition: int,
        partition_of: Callable[[str], int],
        partitions: int = 0,
        outbox: bool = True,
    ) -> None:
        self.engine = engine
        engine.applied = []
        self.graph = engine.identity
        self.partition = partition
        self.partition_of = partition_of
        self.aliases: dict[str, str] = {}  # identifier homed here → person anchored elsewhere
        self.foreign: dict[str, set[str]] = {}  # person → identifiers that are someone else's
        self.awaiting: dict[str, str] = {}  # person → identifier being linked
        self.parked: dict[str, list[Touch]] = {}  # person → touches waiting behind a link
        self.messages = 0
        # event id → input tokens waiting for that touch to be applied here or to leave in a
        # message to another partition (never acknowledged while it is held only in memory)
        self._tokens: dict[str, list[Any]] = {}
        self._outputs: list[Output] = []
        self._sends: list[tuple[str, bytes]] = []
        self._sends_at: list[int] = []  # the earliest event time each of ``_sends`` carries
        # The outbox (``OutboxRecord``): each hand-off message is saved with the state that
        # decided it before it leaves, so a crash cannot lose a decision that has already acted
        # through a message; a restarted partition sends again what its outbox holds. Off only
        # while workers that cannot read it share the partitions (JW_STATE_WRITE_VERSION=1).
        self.outbox = outbox
        self._outbox_seq = 0  # the next outbox record's sequence number
        self._resend: list[tuple[int, str, str, bytes, int]] = []  # loaded: (seq, key, route, ..)
        self._placing: list[str] = []  # outbox keys of sends not yet ``produced``, in order
        self._delivered: list[str] = []  # outbox keys whose message the broker has: deleted
        # Finished input (``FinishedRecord``, with the outbox): each step saves the offsets of
        # the input it finished; read again after a restart, before the commit passed them
        # (an earlier input held keeps it back), such input is acknowledged, not applied again.
        # Offsets as codes: ``offset * 2`` on touchpoints.by_person, ``+ 1`` on the hand-off topic.
        self._finished: set[int] = set()  # loaded: the codes of input finished before a restart
        self._finished_records: dict[str, tuple[int, int, list[int]]] = {}  # key → highest..
        self._finished_seq = 0
        self._inputs_of: dict[int, tuple[Any, int]] = {}  # id(token) → (token, code) in flight
        self._expired: list[str] = []  # finished records the commit has passed: deleted
        # The event ids of the latest touchpoints read (``RECENT_INPUTS``, oldest first) and
        # the person each went to: a duplicate goes to that person too, who recognises it (the
        # engine recognises a touch applied twice to one person). Routed again after an
        # identifier changed owner, it would reach another person and be applied to both.
        self._recent: dict[str, tuple[str, int]] = {}  # event id → (person, offset)
        # The same for the hand-off messages that carry touches, by their identity (``_NONCE``):
        # a message sent again from the outbox after a crash is one decision. Its second copy,
        # at another offset, is acknowledged and dropped: handled as a second delivery it
        # decided again, after the identity graph had moved on, and could send its touch to a
        # second person (tests/unit/fuzz_cases/crash-splits-a-touch-between-two-customers.json).
        self._recent_messages: dict[int, int] = {}  # hash of the message's bytes → offset
        self._done: list[Any] = []
        self._dirty_persons: set[str] = set()
        self._dirty_ids: set[str] = set()
        # messages to this same partition, with the earliest event time they carry
        self._local: deque[tuple[bytes, int]] = deque()
        # told the event ids each drain found applied (duplicates included), when set (tests)
        self.on_applied: Callable[[list[str]], None] | None = None
        # The error policy (streams/journeys.py): touches whose application raised, never
        # submitted again; each one met is reported in ``refusals`` with the input tokens that
        # waited for it (acknowledged with the rest once its dead letter is out).
        self.refused: set[str] = set()
        self.refusals: list[tuple[Touch, list[Any]]] = []
        # Watermark alignment (docs/streaming-topology.md, "Time"), when ``partitions`` is given
        # (0: off, the engine's watermark follows its own input alone).
        self.partitions = partitions
        self.peers: dict[int, int] = {}  # partition → the last frontier it sent here
        self._their: dict[int, int] = {}  # partition → the candidate part of that frontier
        # the candidate part of our frontier never goes back, across restarts too: the highest
        # our peers say we told them (a restarted partition learns it from their answers)
        self._floor = NEVER
        self._outstanding: dict[int, deque[_Sent]] = {}  # by destination, in production order
        self._unplaced: list[_Sent] = []  # sent since the adapter last said where (``produced``)
        self._origins: dict[str, list[int]] = {}  # event id → hand-off input offsets waiting
        self._open: dict[int, int] = {}  # hand-off input offset → its touches not absorbed yet
        self._next_input = 0  # past the highest hand-off input offset seen (or committed)
        self._told: dict[int, tuple[int, int, int, int]] = {}  # partition → what it was told
        self._inputs = 0  # input records handled (frontiers not counted)
        self._inputs_ticked = -1
        self._active_wall = NEVER  # the wall clock when ``tick`` last found new input
        # peers that asked for our frontier (they restarted), with the epoch of their ask
        self._hello: dict[int, int | None] = {}
        # This shard's epoch, in every frontier it sends: a frontier counts towards the bound
        # only once its sender has answered this epoch's hello (or it comes from a release
        # that sends no epoch). Read again after a restart, the frontiers the hand-off
        # partition still holds are history: an idle partition's unlimited one from before
        # any input among them, they let the restarted watermark race ahead of the hand-off
        # messages behind them (``_on_frontier``).
        self._epoch = getrandbits(63)
        # this partition's candidate and the wall clock when it first asked in this epoch
        self._asked: tuple[int, int] | None = None
        # the highest event time of this partition's own input (at most its received_at), and
        # since when (wall clock, noticed by ``tick``) it has not moved: a partition whose
        # touchpoints all go on to other partitions still promises its candidate from them
        self._seen = NEVER
        self._seen_ticked = NEVER
        self._seen_since = NEVER
        self._input_candidate = NEVER
        # idle (no input for ``idle_after``) and holding nothing outside the engine: this
        # partition holds nobody back (its frontier is unlimited) until its next input
        self._quiet = False
        # Peers whose counted frontier is unlimited (idle), with the candidate it allows from
        # and the wall clock when it came: it holds while this partition's input moves no
        # faster than the wall clock (``_recheck_quiet``)
        self._quiet_peers: dict[int, tuple[int, int]] = {}
        self._wall = NEVER  # the wall clock of the latest tick
        self._notices: list[tuple[int, bytes]] = []
        self.taken = 0  # touches taken out of the engine with a person handed to another partition
        if partitions > 1:
            engine.bound = NEVER  # until every other partition has been heard from

    # --- input ---------------------------------------------------------------------------------
    def touch(self, touch: Touch, token: Any, offset: int = -1) -> None:
        """A touchpoint from ``touchpoints.by_person`` (keyed by its first identifier), at
        ``offset`` there (-1: not known, nothing recognised as finished)."""
        at = touch.at
        received = touch.received_at
        if received is not None and received < at:
            at = received
        if at > self._seen:  # (the input's own candidate: touches forwarded count too)
            self._seen = at
        if offset >= 0 and (self.outbox or self._finished) and self._input(token, offset * 2):
            return
        recent = self._recent
        event_id = touch.event_id
        first = recent.get(event_id)
        if first is not None and offset >= 0 and first[1] >= 0 and first[1] != offset:
            # another record of a touchpoint read already (a client's retry, an ingest
            # replay): acknowledged, not routed (routed again after an identifier changed
            # owner, or beside the first on another path, it would reach another person)
            self.engine.counters.duplicates += 1
            if token is not None:
                self._done.append(token)
            return
        self._inputs += 1
        self._wait(touch, token)
        if first is not None:
            # the same record delivered again: to the person its first delivery went to, who
            # recognises it (its token waits like any other: acknowledging it now would let
            # the commit pass the first delivery, still held)
            self._route(touch, first[0])
            return
        recent[event_id] = (self._route(touch, None), offset)
        if len(recent) > RECENT_INPUTS:
            del recent[next(iter(recent))]

    def reach(self, at: int, token: Any) -> None:
        """Event time on this partition's input has reached ``at`` without a touchpoint: the
        end of a backfill (``journeywatch import --end-of-backfill`` writes it behind the
        import's touchpoints). The watermark moves as a touchpoint at ``at`` would move it."""
        if at > self._seen:
            self._seen = at
        # (applied again after a restart, finished or not: it is idempotent, and it moves the
        # watermark of the new engine too)
        self._inputs += 1
        self._outputs += self.engine.reach(at)
        if token is not None:
            self._done.append(token)

    def message(self, raw: bytes, token: Any, offset: int = -1) -> None:
        """A message from the hand-off topic (``offset``: its offset in this partition, for
        watermark alignment; -1 for a message on a hop within this partition)."""
        self.messages += 1
        if offset >= 0 and self._finished and offset * 2 + 1 in self._finished:
            if offset >= self._next_input:
                self._next_input = offset + 1
            self._input(token, offset * 2 + 1)  # finished before a restart: acknowledged
            if raw[-_NONCE_END:-_NONCE_TAIL] == _NONCE:  # (a copy still to come is known)
                self._recent_messages.setdefault(hash(raw), offset)
            return
        message = decode_message(raw)  # any version this worker reads (ValueError otherwise)
        if isinstance(message, Frontier):
            self._on_frontier(message)
            if token is not None:
                self._done.append(token)
            return
        if offset >= 0 and self.outbox and token is not None:
            self._inputs_of[id(token)] = (token, offset * 2 + 1)
        if offset >= 0 and raw[-_NONCE_END:-_NONCE_TAIL] == _NONCE:
            recent = self._recent_messages
            digest = hash(raw)
            first = recent.get(digest)
            if first is not None and first != offset:
                self.engine.counters.duplicates += 1
                if self.partitions and offset >= self._next_input:
                    self._next_input = offset + 1
                if token is not None:
                    self._done.append(token)
                return
            if first is None:
                recent[digest] = offset
                if len(recent) > RECENT_INPUTS:
                    del recent[next(iter(recent))]
        if offset >= 0 and self.partitions:
            self._note(message, offset)
            self._inputs += 1
        # The message's token waits for the touch it carries: acknowledged once that touch is
        # applied here or has left in a message to another partition (a local hop keeps it).
        if isinstance(message, Forward):
            self._wait(message.touch, token)
            self._route(message.touch, message.person)
        elif isinstance(message, Link):
            self._wait(message.touch, token)
            self._on_link(message.key, message.person, message.touch, message.awaits)
        elif isinstance(message, Handoff):
            self._on_handoff(message, token)
        else:  # redirect
            self._wait(message.touch, token)
            self._on_redirect(message.person, message.to, message.touch, message.awaits)

    def _input(self, token: Any, code: int) -> bool:
        """An input record (``code``: see ``_finished``): True when a step finished it before
        a restart (it is acknowledged and goes no further); otherwise it is followed until
        done, so that the step that finishes it saves that."""
        if token is None:
            return False
        if code in self._finished:
            self._done.append(token)
            return True
        if self.outbox:
            self._inputs_of[id(token)] = (token, code)
        return False

    def committed(self, touches: int, handoffs: int) -> None:
        """The consumer's committed offsets on this partition of touchpoints.by_person and of
        the hand-off topic: the finished records wholly before them are deleted (that input is
        never read again)."""
        if not self._finished_records:
            return
        for key, (top_touch, top_handoff, codes) in list(self._finished_records.items()):
            if top_touch < touches and top_handoff < handoffs:
                del self._finished_records[key]
                self._expired.append(key)
                if self._finished:
                    self._finished.difference_update(codes)

    def tick(self, wall_ms: int) -> None:
        if not self.partitions:
            self._outputs += self.engine.tick(wall_ms)
            return
        if wall_ms > self._wall:
            self._wall = wall_ms
        if self._inputs != self._inputs_ticked:
            self._inputs_ticked, self._active_wall = self._inputs, wall_ms
        self._rebound()
        self._outputs += self.engine.tick(wall_ms)
        engine = self.engine
        if self._seen != self._seen_ticked:
            self._seen_ticked, self._seen_since = self._seen, wall_ms
        if self._seen > NEVER:  # as the engine's own candidate, idle advance included
            idle = wall_ms - self._seen_since
            candidate = self._seen - engine.lateness + (idle if idle >= engine.idle_after else 0)
            if candidate > self._input_candidate:
                self._input_candidate = candidate
        self._quiet = (
            wall_ms - self._active_wall >= engine.idle_after
            and not self._open
            and self._held() == FOREVER
        )
        self._tell()

    # --- watermark alignment --------------------------------------------------------------------
    def resume(self, committed: int) -> None:
        """Where this partition's hand-off input is committed: everything before it was
        absorbed (or sent on) by an earlier owner, and is reported processed."""
        if committed > self._next_input:
            self._next_input = committed

    def produced(self, offsets: list[int]) -> None:
        """The adapter's answer for the hand-off messages (``sends``) of the steps drained
        since the last call: the offset each was written at, in order. (Exact offsets: an
        upper bound, such as the last offset of the batch, can make two partitions wait for
        each other's next message.)"""
        for sent, offset in zip(self._unplaced, offsets, strict=False):
            sent.offset = offset
        self._unplaced = []
        if self._placing:
            count = len(offsets)
            self._delivered += self._placing[:count]
            del self._placing[:count]

    @property
    def frontier(self) -> int:
        """No touch this partition sends from now on is earlier than this, unless it came
        late to this partition: the lower of its candidate watermark and every touch it holds
        outside the engine (parked, on a local hop) or has sent and not seen absorbed."""
        if self._quiet:
            return FOREVER
        held = self._held()
        candidate = self._candidate()
        return held if held < candidate else candidate

    def _candidate(self) -> int:
        return max(self.engine.candidate, self._input_candidate, self._floor)

    @property
    def processed(self) -> int:
        """Every hand-off input record before this offset is absorbed (its touches are in the
        engine here, or went on and were absorbed where they went) but those still ``open``.
        (Not a low-water mark: a record open here must not hold back the report of a later one
        that its own relay waits for, or two partitions wait for each other.)"""
        return self._next_input

    @property
    def outstanding(self) -> int:
        return sum(len(queue) for queue in self._outstanding.values())

    def _held(self) -> int:
        low = FOREVER
        for touches in self.parked.values():
            for touch in touches:
                if touch.at < low:
                    low = touch.at
        for _, at in self._local:
            if at < low:
                low = at
        for queue in self._outstanding.values():
            for sent in queue:
                if sent.at < low:
                    low = sent.at
        return low

    def _lower(self, at: int) -> None:
        """A touch is now held outside the engine: the watermark stays before it."""
        if self.partitions and at < self.engine.bound:
            self.engine.bound = at

    def _allowance(self, ref: int, since: int) -> int:
        """How far an idle peer's unlimited frontier lets this partition's watermark go: the
        peer's candidate when it came (or where this one stood when it asked for it), moved on
        by the wall-clock time since and ``QUIET_SLACK_MS`` (``_recheck_quiet``)."""
        return self._moved_on(ref, since) + QUIET_SLACK_MS

    def _moved_on(self, at: int, since: int) -> int:
        """``at`` (a candidate) moved on by the wall-clock time from ``since`` to now."""
        wall = self._wall
        return at + (wall - since if NEVER < since < wall else 0)

    def _recheck_quiet(self) -> None:
        """An idle peer's unlimited frontier says that it holds nothing and has had no input
        for a while, not what input it has not read yet. Live input moves this partition's
        candidate with the wall clock; when it runs further ahead than that (an import, a
        backlog, a stream starting into idle partitions), the peer may well have input of the
        same stream unread, whose touches travel here below that candidate. So the watermark
        goes no further than the peer's allowance (``_rebound``), and past it the peer is asked
        again, as after a restart: a new epoch, its frontier counts once it answers (the
        others' still count), and its answer's allowance starts from the higher of its own
        candidate and where this one stood when it was asked. Before, a stream all at once
        into partitions idle until then decided journeys twice (tests/unit/test_shard.py,
        stream 31)."""
        candidate = self.engine.candidate
        stale = [
            peer
            for peer, (ref, since) in self._quiet_peers.items()
            if candidate > self._allowance(ref, since)
        ]
        if not stale:
            return
        self._new_epoch()
        for peer in stale:
            del self._quiet_peers[peer]
            self.peers.pop(peer, None)

    def _new_epoch(self) -> None:
        self._epoch = getrandbits(63)
        self._asked = None
        self._told.clear()  # (the hello goes to every peer with the next frontier)

    def _rebound(self) -> None:
        """The engine's bound: what this partition holds outside the engine and the last
        frontier of every other partition (none heard yet from one: the watermark waits; an
        idle one's unlimited frontier as far as its allowance)."""
        quiet = self._quiet_peers
        if quiet:
            self._recheck_quiet()
        bound = self._held()
        if len(self.peers) < self.partitions - 1:
            bound = NEVER
        else:
            for peer, frontier in self.peers.items():
                if quiet and peer in quiet:
                    frontier = self._allowance(*quiet[peer])
                if frontier < bound:
                    bound = frontier
        self.engine.bound = bound
        self._outputs += self.engine.release()

    def _tell(self) -> None:
        """Send this partition's frontier to every other partition when it changed and when
        one asked for it (it restarted). Nothing while nothing changes: a quiet partition's
        frontier is unlimited, so idle partitions go silent."""
        frontier, processed = self.frontier, self.processed
        candidate = self._candidate()
        still = sorted(self._open)
        now = (frontier, processed, len(still), hash(tuple(still)))
        hello = len(self.peers) < self.partitions - 1
        if hello and self._asked is None:
            self._asked = (self.engine.candidate, self._wall)
        for partition in range(self.partitions):
            if partition == self.partition:
                continue
            if self._told.get(partition) == now and partition not in self._hello:
                continue
            message = Frontier(
                self.partition,
                frontier,
                candidate,
                processed,
                still,
                self._their.get(partition),
                hello,
                self._epoch,
                self._hello.get(partition),
            )
            self._notices.append((partition, encode_message(message)))
            self._told[partition] = now
        self._hello.clear()

    def _on_frontier(self, message: Frontier) -> None:
        sender = message.sender
        if sender == self.partition or not self.partitions:
            return
        if message.frontier is not None and message.candidate is not None:
            self._their[sender] = message.candidate
            # A frontier bounds this partition's watermark once the sender has answered our
            # hello (it was computed after the sender read it, so every message the sender
            # wrote here before it has been read here): one read again from before a restart
            # (the hand-off input is read again from the committed offset) promised what the
            # sender would send *then*, not what it may still send. Unlimited frontiers of
            # idle partitions before any input among them let a restarted partition's
            # watermark jump to its candidate, past the touches of hand-off messages read
            # after them. (A release that sends no epoch: counted at once, as before.)
            if message.epoch is None or sender in self.peers or message.answers == self._epoch:
                self.peers[sender] = message.frontier
                if message.frontier >= FOREVER and message.epoch is not None:
                    # From the peer's own candidate (what it reads later is late there too)
                    # or, answering our hello, from where we stood when we asked (it had read
                    # what was written before): the higher, as it stands now
                    ref = message.candidate
                    asked = self._asked
                    if message.answers == self._epoch and asked is not None:
                        ref = max(ref, self._moved_on(asked[0], asked[1]))
                    self._quiet_peers[sender] = (ref, self._wall)
                else:
                    self._quiet_peers.pop(sender, None)
        yours = message.yours
        if yours is not None and yours > self._floor:
            self._floor = yours
        processed = message.processed
        still = set(message.open)
        queue = self._outstanding.get(sender)
        if queue:
            kept: deque[_Sent] = deque()
            for sent in queue:
                if 0 <= sent.offset < processed and sent.offset not in still:
                    for offset in sent.inputs:
                        self._close(offset)
                else:
                    kept.append(sent)
            self._outstanding[sender] = kept
        if message.hello:
            self._hello[sender] = message.epoch
        self._rebound()

    def _note(self, message: Carrying, offset: int) -> None:
        """A hand-off input record: open until each touch it carries is absorbed."""
        if offset >= self._next_input:
            self._next_input = offset + 1
        carried = _carried(message)
        origins, opened = self._origins, self._open
        opened[offset] = opened.get(offset, 0) + len(carried)
        for touch in carried:
            origins.setdefault(touch.event_id, []).append(offset)

    def _absorbed(self, event_id: str) -> None:
        """A touch is in the engine here (or refused): its hand-off inputs are done with it."""
        if self._origins:
            offsets = self._origins.pop(event_id, None)
            if offsets:
                for offset in offsets:
                    self._close(offset)

    def _close(self, offset: int) -> None:
        left = self._open.get(offset, 0) - 1
        if left > 0:
            self._open[offset] = left
        else:
            self._open.pop(offset, None)

    def drain(self) -> Step:
        """What this partition must now do, in order (see the module documentation)."""
        while self._local:
            raw, _ = self._local.popleft()
            self.message(raw, None)
        if self.partitions:
            self._rebound()
        applied = self.engine.applied
        if applied:
            if self.on_applied is not None:
                self.on_applied(applied)
            tokens = self._tokens
            for event_id in applied:
                waiting = tokens.pop(event_id, None)
                if waiting:
                    self._settle(waiting)
            applied.clear()
        if self.engine.forgotten:
            self._release_forgotten()
        records: dict[str, bytes | None] = {}
        persons = self.engine.dirty | self._dirty_persons
        for person in persons:
            records["p:" + person] = self._person_record(person)
        identifiers = self._dirty_ids | self.graph.changed
        for identifier in identifiers:
            records["i:" + identifier] = self._identifier_record(identifier)
        self.engine.dirty = set()
        self._dirty_persons = set()
        self._dirty_ids = set()
        self.graph.changed = set()
        sends = self._sends
        # (without the outbox too: what a worker with it saved, read here after a rebalance,
        # is sent and deleted; only this step's own sends and input are not saved then)
        if self.outbox or self._resend or self._delivered or self._placing:
            sends = self._fill_outbox(records)
        if self.outbox or self._expired:
            self._save_finished(records)
        step = Step(self._outputs, sends, records, self._done, self._notices, self.outbox)
        self._outputs, self._sends, self._done, self._notices = [], [], [], []
        self._sends_at = []
        return step

    def _release_forgotten(self) -> None:
        """The engine forgot persons (the churn window passed without a touchpoint and no
        journey of theirs was open): what this partition keeps beside their state goes too,
        so that their records are saved as deletions: the identifiers that were someone
        else's, and the customers seen with their identifiers homed here (a blocked
        identifier stays blocked: it is a shared device's, not the person's)."""
        graph = self.graph
        for person, members in self.engine.forgotten:
            self.foreign.pop(person, None)
            self._dirty_persons.add(person)
            for key in members:
                if key not in graph.blocked and graph.customers_seen.pop(key, None) is not None:
                    self._dirty_ids.add(key)
        self.engine.forgotten = []

    def erase(self, keys: Iterable[str], token: Any = None) -> int:
        """Erasure (``journeywatch erase``, a control record on every partition): forget every
        person anchored here that owns one of ``keys`` (identifier keys, ``kind:value``, never
        raw e-mails) or is anchored at one, with all its identifiers, its parked touches and
        the touches held for it; drop this partition's identifier records of ``keys`` (aliases,
        customers seen, blocks) and the aliases and customers-seen entries naming those persons.
        All of it is saved as deletions by the next ``drain``. Idempotent: applied again (a
        replayed control record) it finds nothing. Returns the persons forgotten here. A later
        touchpoint with one of ``keys`` starts a new person."""
        while self._local:  # hops within this partition of the input before it, first
            raw, _ = self._local.popleft()
            self.message(raw, None)
        wanted = set(keys)
        graph, engine = self.graph, self.engine
        named: set[str] = set()  # the persons ``keys`` name, wherever anchored
        for key in wanted:
            owner = graph.owner.get(key)
            if owner is not None:
                named.add(owner)
            alias = self.aliases.get(key)
            if alias is not None:
                named.add(alias)
            customer = _customer_of([key])
            named.add(customer if customer is not None else "a:" + key)
        forgotten = 0
        dropped: list[Touch] = []
        for person in sorted(named):
            if not self._here(anchor_key(person)):
                continue
            present = (
                person in engine.persons
                or person in graph.members
                or person in self.parked
                or person in self.awaiting
                or person in self.foreign
            )
            if not present:
                continue
            forgotten += 1
            wanted.update(engine.forget(person))
            wanted.add(anchor_key(person))
            dropped += self.parked.pop(person, [])
            self.awaiting.pop(person, None)
            self._dirty_persons.add(person)
        self._release_forgotten()
        dropped += engine.drop_held(wanted)
        for touch in dropped:  # never applied: their input is done with
            waiting = self._tokens.pop(touch.event_id, None)
            if waiting:
                self._settle(waiting)
            self._absorbed(touch.event_id)
        for key in wanted:
            if key in self.aliases or key in graph.customers_seen or key in graph.blocked:
                self.aliases.pop(key, None)
                graph.customers_seen.pop(key, None)
                graph.blocked.discard(key)
                self._dirty_ids.add(key)
            if graph.owner.get(key) is not None:  # (a person anchored elsewhere: it goes there)
                person = graph.owner.pop(key)
                members = graph.members.get(person)
                if members is not None:
                    graph.members[person] = tuple(m for m in members if m != key)
                    self._dirty_persons.add(person)
        for key, person in list(self.aliases.items()):
            if person in named:
                del self.aliases[key]
                self._dirty_ids.add(key)
        for key, seen in list(graph.customers_seen.items()):
            if seen & named:
                seen -= named
                if not seen:
                    del graph.customers_seen[key]
                self._dirty_ids.add(key)
        if token is not None:
            self._inputs += 1
            self._done.append(token)
        return forgotten

    def _save_finished(self, records: dict[str, bytes | None]) -> None:
        """The input this step finished (its ``done``), saved as a finished record."""
        for key in self._expired:
            records[key] = None
        self._expired = []
        inputs_of = self._inputs_of
        if not inputs_of:
            return
        touches: list[int] = []
        handoffs: list[int] = []
        for token in self._done:
            entry = inputs_of.pop(id(token), None)
            if entry is not None:
                code = entry[1]
                if code & 1:
                    handoffs.append(code >> 1)
                else:
                    touches.append(code >> 1)
        if not touches and not handoffs:
            return
        seq = self._finished_seq
        self._finished_seq += 1
        key = "d:" + str(seq)
        touches.sort()
        handoffs.sort()
        records[key] = encode_record(FinishedRecord(touches, handoffs, seq))
        codes = [o * 2 for o in touches] + [o * 2 + 1 for o in handoffs]
        highest = (touches[-1] if touches else -1, handoffs[-1] if handoffs else -1)
        self._finished_records[key] = (highest[0], highest[1], codes)

    def _fill_outbox(self, records: dict[str, bytes | None]) -> list[tuple[str, bytes]]:
        """This step's sends, each saved in ``records`` as an outbox record; before them what a
        restart found in the outbox (sent again), and the outbox records of messages the
        broker has taken deleted."""
        for key in self._delivered:
            records[key] = None
        self._delivered = []
        sends: list[tuple[str, bytes]] = []
        placing: list[str] = []
        if self._resend:
            resend = sorted(self._resend)
            self._resend = []
            again: list[_Sent] = []
            for _, key, route, raw, at in resend:
                sends.append((route, raw))
                placing.append(key)
                if self.partitions:
                    sent = _Sent(self.partition_of(route), at, [])
                    self._outstanding.setdefault(sent.to, deque()).append(sent)
                    again.append(sent)
                    self._lower(at)
            if again:  # placed before this step's own sends, in the order they go out
                split = len(self._unplaced) - len(self._sends)
                self._unplaced[split:split] = again
        if not self.outbox:
            self._placing += placing
            return sends + self._sends
        for (route, raw), at in zip(self._sends, self._sends_at, strict=True):
            key = "o:" + str(self._outbox_seq)
            self._outbox_seq += 1
            records[key] = encode_record(OutboxRecord(route, raw.decode(), at))
            sends.append((route, raw))
            placing.append(key)
        self._placing += placing
        return sends

    @property
    def held(self) -> int:
        """Input not yet acknowledgeable: held for the watermark, parked or on a local hop."""
        joins: set[int] = set()
        count = 0
        for waiting in self._tokens.values():
            for token in waiting:
                if isinstance(token, _Join):
                    if id(token) in joins:
                        continue
                    joins.add(id(token))
                count += 1
        return count

    def _wait(self, touch: Touch, token: Any) -> None:
        if token is not None:
            self._tokens.setdefault(touch.event_id, []).append(token)

    def _wait_all(self, touches: list[Touch], token: Any) -> None:
        """``token`` waits for every one of ``touches`` (see ``_Join``)."""
        if token is None:
            return
        event_ids = list(dict.fromkeys([t.event_id for t in touches]))
        if len(event_ids) == 1:
            self._tokens.setdefault(event_ids[0], []).append(token)
            return
        join = _Join(token, len(event_ids))
        for event_id in event_ids:
            self._tokens.setdefault(event_id, []).append(join)

    def _settle(self, waiting: list[Any]) -> None:
        """The tokens that waited for a touch now applied here or gone in a message: those
        that waited only for it may be acknowledged, a join once its last touch settles."""
        done = self._done
        for token in waiting:
            if isinstance(token, _Join):
                token.left -= 1
                if token.left == 0:
                    done.append(token.token)
            else:
                done.append(token)

    # --- records -------------------------------------------------------------------------------
    def _person_record(self, person: str) -> bytes | None:
        record = self.engine.person_record(person)
        foreign = self.foreign.get(person)
        awaiting = self.awaiting.get(person)
        if record is None and not foreign and awaiting is None:
            return None
        return encode_record(PersonRecord(record, sorted(foreign or ()), awaiting))

    def _identifier_record(self, identifier: str) -> bytes | None:
        alias = self.aliases.get(identifier)
        seen = self.graph.customers_seen.get(identifier)
        blocked = identifier in self.graph.blocked
        if alias is None and not seen and not blocked:
            return None
        return encode_record(IdentifierRecord(alias, sorted(seen or ()), blocked))

    def load(
        self,
        records: Iterable[tuple[str, bytes]],
        failed: list[tuple[str, bytes, Exception]] | None = None,
    ) -> None:
        """Recover from saved records (the inverse of ``drain``'s ``records``). A record that
        cannot be loaded is left out entirely, reported in ``failed`` (when given; raised
        otherwise) and deleted from the store by the next ``drain``."""
        for key, raw in records:
            try:
                self._load_record(key, raw)
            except Exception as exc:  # a corrupt record is data: the caller's
                if failed is None:
                    raise
                self._forget(key)
                failed.append((key, raw, exc))
        self.engine.dirty = set()

    def _load_record(self, key: str, raw: bytes) -> None:
        record = decode_record(key, raw)  # any version this worker reads (ValueError otherwise)
        if isinstance(record, FinishedRecord):
            if record.step >= self._finished_seq:
                self._finished_seq = record.step + 1
            codes = [o * 2 for o in record.touches] + [o * 2 + 1 for o in record.handoffs]
            self._finished.update(codes)
            top_touch = max(record.touches) if record.touches else -1
            top_handoff = max(record.handoffs) if record.handoffs else -1
            self._finished_records[key] = (top_touch, top_handoff, codes)
        elif isinstance(record, OutboxRecord):
            seq = int(key[2:])  # (not a number: ValueError, the record left out)
            if seq >= self._outbox_seq:
                self._outbox_seq = seq + 1
            self._resend.append((seq, key, record.route, record.message.encode(), record.at))
        elif isinstance(record, PersonRecord):
            person = key[2:]
            if record.record is not None:
                self.engine.load_person(person, record.record)
            if record.foreign:
                self.foreign[person] = set(record.foreign)
            if record.awaiting is not None:
                self.awaiting[person] = record.awaiting
        else:
            identifier = key[2:]
            if record.alias is not None:
                self.aliases[identifier] = record.alias
            if record.seen:
                self.graph.customers_seen[identifier] = set(record.seen)
            if record.blocked:
                self.graph.blocked.add(identifier)

    def discard(self, key: str) -> None:
        """Leave out a saved record (``p:<person>``, ``i:<identifier>``) found poisonous: what
        it loaded is undone, and the next ``drain`` deletes it from the store."""
        self._forget(key)

    def _forget(self, key: str) -> None:
        """Undo whatever a record that failed to load had loaded; its deletion is saved."""
        name = key[2:]
        if key.startswith("p:"):
            self.engine.drop_person(name)  # (not ``persons.pop``: its journeys leave the counts)
            for identifier in self.graph.members.pop(name, ()):
                self.graph.owner.pop(identifier, None)
            self.foreign.pop(name, None)
            self.awaiting.pop(name, None)
            self._dirty_persons.add(name)
        elif key.startswith("i:"):
            self.aliases.pop(name, None)
            self.graph.customers_seen.pop(name, None)
            self.graph.blocked.discard(name)
            self._dirty_ids.add(name)
        elif key.startswith("o:"):
            self._resend = [entry for entry in self._resend if entry[1] != key]
            self._delivered.append(key)
        elif key.startswith("d:"):
            self._finished_records.pop(key, None)
            self._expired.append(key)

    def _submit(self, person: str, touch: Touch) -> None:
        """Hand a touch of ``person`` (anchored here) to the engine's watermark."""
        if self._origins:
            self._absorbed(touch.event_id)
        refused = self.refused
        if refused and touch.event_id in refused:
            tokens = self._tokens.pop(touch.event_id, [])
            # the input records that carried only this touch (a hand-off carrying others too
            # waits for them: acknowledged with its last one)
            self.refusals.append((touch, [t for t in tokens if not isinstance(t, _Join)]))
            self._settle(tokens)
            return
        self._outputs += self.engine.submit(self._strip_foreign(person, touch))

    # --- routing -------------------------------------------------------------------------------
    def _here(self, key: str) -> bool:
        return self.partition_of(key) == self.partition

    def _send(self, key: str, message: Carrying) -> None:
        carried = _carried(message)
        raw = encode_message(message)
        at = min(touch.at for touch in carried)
        if self._here(key):
            self._local.append((raw, at))
            self._lower(at)
            return
        if self.outbox:
            # its identity (see ``_recent_messages``): sent again from the outbox after a
            # crash, the same bytes; the same message decided anew, other bytes
            raw = b"%s,%s%016x%s" % (raw[:-1], _NONCE, getrandbits(64), b'"}')
        self._sends.append((key, raw))
        self._sends_at.append(at)
        # the touches it carries are safe once the broker has it: their input may be acknowledged
        tokens = self._tokens
        for touch in carried:
            waiting = tokens.pop(touch.event_id, None)
            if waiting:
                self._settle(waiting)
        if self.partitions:
            # outstanding until the destination says it absorbed it; the hand-off inputs that
            # brought its touches here wait for that too
            inputs: list[int] = []
            if self._origins:
                for touch in carried:
                    offsets = self._origins.pop(touch.event_id, None)
                    if offsets:
                        inputs += offsets
            sent = _Sent(self.partition_of(key), at, inputs)
            self._outstanding.setdefault(sent.to, deque()).append(sent)
            self._unplaced.append(sent)
            self._lower(at)

    def _follow(self, person: str) -> str:
        """Where a person went: an anonymous person merged into another leaves an alias on its
        anchor identifier, which this partition may hold, or, merged into a person anchored
        here too, the anchor owned by that person. (An alias a crash left against the merge
        direction is taken back here: below.)"""
        blocked = self.graph.blocked
        for _ in range(MAX_HOPS):
            anchor = anchor_key(person)
            # (the person of a blocked identifier never moves: an alias on one is old state)
            here = self._here(anchor) and anchor not in blocked
            moved = self.aliases.get(anchor) if here else None
            if moved is None and here:
                # merged into a person anchored here: the anchor is that person's, no alias
                # (a later-sorting anonymous owner was given it while this person did not
                # exist: not a merge, below)
                owner = self.graph.owner.get(anchor)
                merged = owner is not None and (owner.startswith("c:") or owner < person)
                if merged and person.startswith("a:"):
                    moved = owner
            if moved is None or moved == person:
                return person
            if person.startswith("a:") and moved.startswith("a:") and moved > person:
                # Stale after a crash: an anonymous person merges only into one whose id sorts
                # first ("merge direction"); an alias to a later one was given while this
                # person did not exist (``_on_link``, nobody owned the identifier). That it is
                # asked for now means this home had decided otherwise before a crash lost its
                # state (a redirect to it, then the replayed link given to the other): the
                # decision already acted on stands, or the two aliases point at each other and
                # every hand-off for either bounces between their homes for ever.
                self._give(anchor, person)
                return person
            person = moved
        return person

    def _person_of(self, keys: list[str]) -> str:
        first = keys[0]
        if first.startswith(CUSTOMER_PREFIX):
            return "c:" + first[len(CUSTOMER_PREFIX) :]
        if first in self.graph.blocked:
            return "a:" + first
        alias = self.aliases.get(first)
        if alias is not None:
            return self._follow(alias)
        owner = self.graph.owner.get(first)
        return owner if owner is not None else "a:" + first

    def _needs_link(self, person: str, keys: list[str]) -> str | None:
        """The first identifier of the touch whose home must be asked before it applies."""
        anchor = anchor_key(person)
        foreign = self.foreign.get(person)
        owner = self.graph.owner
        blocked = self.graph.blocked
        for key in keys:
            if key == anchor or owner.get(key) == person or key in blocked:
                continue
            if foreign is not None and key in foreign:
                continue
            if self._here(key) and key not in self.aliases:
                continue  # its home is here: the engine stitches it, as in one process
            return key
        return None

    def _strip_foreign(self, person: str, touch: Touch) -> Touch:
        """The touch without the identifiers that are someone else's. When none is left, the
        touch still belongs to the person it was routed to: it carries the person's anchor
        (the engine resolves it to that person and links nothing)."""
        foreign = self.foreign.get(person)
        if not foreign:
            return touch
        kept = tuple(i for i in touch.identifiers if i[0] + ":" + i[1] not in foreign)
        if not kept:
            kind, _, value = anchor_key(person).partition(":")
            kept = ((kind, value),)
        return touch._replace(identifiers=kept)

    def _route(self, touch: Touch, person: str | None) -> str:
        """Apply a touch here, or send it where it must go (its token waits: ``_wait``).
        Returns the person it went to."""
        keys = _keys(touch)
        person = self._person_of(keys) if person is None else self._follow(person)
        customer = _customer_of(keys)
        if customer is not None and customer != person:
            # A customer's touch is that customer's, whoever it was sent to: never another
            # person's (two customers are never merged). Messages written before this rule
            # could carry one to the wrong person.
            person = customer
        anchor = anchor_key(person)
        if not self._here(anchor):
            self._send(anchor, Forward(person, touch))
            return person
        if person in self.awaiting:
            self.parked.setdefault(person, []).append(touch)
            self._lower(touch.at)
            return person
        key = self._needs_link(person, keys)
        if key is not None:
            self._link(person, key, touch)
            return person
        self._submit(person, touch)
        return person

    def _link(self, person: str, key: str, touch: Touch) -> None:
        self.awaiting[person] = key
        self._dirty_persons.add(person)
        self._send(key, Link(key, person, touch, key))

    def _release(self, person: str) -> None:
        """Route the touches parked behind a link, in arrival order, until one links again."""
        parked = self.parked.get(person)
        while parked and person not in self.awaiting:
            self._route(parked.pop(0), person)
        if not parked:
            self.parked.pop(person, None)

    def _take(
        self, person: str, also: str | None = None
    ) -> tuple[list[Any] | None, list[str], list[Touch]]:
        """Remove a person anchored here, with its held and parked touches (they travel on)."""
        record, members, held = self.engine.extract(person, also, anchor_key(person))
        # (touches out of the engine: counted in no frontier before, so they may reach their
        # destination behind its watermark; docs/streaming-topology.md, "Time")
        self.taken += len(held)
        held += self.parked.pop(person, [])
        self.awaiting.pop(person, None)
        self.foreign.pop(person, None)
        self._dirty_persons.add(person)
        return record, members, held

    def _claimed(self, held: list[Touch]) -> tuple[list[Touch], list[tuple[Touch, str]]]:
        """Split touches taken with an anonymous person into those that travel with it and
        those a customer anchored here claims: a touch naming a customer, or carrying an
        identifier a customer owns here, is that customer's, never the person's it was held
        beside (taken along, it linked one customer's identifiers to another: a merge)."""
        travel: list[Touch] = []
        stay: list[tuple[Touch, str]] = []
        owner, blocked = self.graph.owner, self.graph.blocked
        for touch in held:
            keys = _keys(touch)
            customer = _customer_of(keys)
            if customer is None:
                for key in keys:
                    person = owner.get(key)
                    if person is not None and person.startswith("c:") and key not in blocked:
                        customer = person
                        break
            if customer is None:
                travel.append(touch)
            else:
                stay.append((touch, customer))
        return travel, stay

    def _reroute(self, stay: list[tuple[Touch, str]]) -> None:
        """Route again the touches ``_claimed`` kept here, now that identifiers have moved
        (their tokens still wait for them)."""
        for touch, customer in stay:
            self._route(touch, customer)

    # --- the protocol ---------------------------------------------------------------------------
    def _on_link(self, key: str, target: str, touch: Touch, awaits: str | None) -> None:
        """At the home of ``key``: it is wanted by ``target``."""
        graph = self.graph
        moved = self._follow(target)
        if moved != target:
            # The asking person was merged into another since it asked (a link relayed from
            # another home, or waiting behind this partition's input): the identifier is wanted
            # by the person it is now. Acting for the old one would give the identifier to a
            # person that no longer exists and ask the other person's home to merge the person
            # it was merged into back into it: two anonymous persons whose anchors alias each
            # other, and every hand-off for either bounces between their homes. (Its awaited
            # link was dropped when it moved: the answer releases nothing of the other's.)
            target, awaits = moved, None
        alias = self.aliases.get(key)
        current = self._follow(alias) if alias is not None else graph.owner.get(key)
        answer = Handoff(target, None, None, [], [], [touch], awaits)
        if key in graph.blocked:
            answer = answer._replace(foreign=[key])
        elif current == target:
            answer = answer._replace(identifiers=[key])
        elif current is None and self._yields(target, "a:" + key, key):
            # Nobody owns it yet, but this identifier's own anonymous person is here (state,
            # or touches carrying it held, not applied yet) and sorts first: it keeps the
            # identifier and the asking person moves to it (below)
            self._give(key, "a:" + key)
            self._redirect(target, "a:" + key, touch, awaits)
            return
        elif current is None:
            # Nobody owns it yet, but touches carrying it may be held here, not applied yet:
            # they were this identifier's anonymous person's, so they go along.
            anonymous = "a:" + key
            record, members, taken = self._take(anonymous, also=key)
            held, stay = self._claimed(taken)
            self._give(key, target)
            answer = answer._replace(identifiers=[key])
            if held or record is not None:
                answer = answer._replace(source=anonymous, record=record, touches=[*held, touch])
            self._send(anchor_key(target), answer)
            self._reroute(stay)
            return
        elif current.startswith("c:") and target.startswith("c:"):
            if graph.share(key, current, target):
                self._outputs.append(blocked_output(key, touch.at, target, touch.event_id))
            answer = answer._replace(foreign=[key])
        elif current.startswith("c:"):
            # the asking person is anonymous and the identifier is a customer's: move it there
            self._redirect(target, current, touch, awaits)
            return
        elif target.startswith("a:") and current < target:
            # Two anonymous persons: the one whose id sorts first takes the other, whichever
            # asked (here, ``current``: the asking person moves to it, as to a customer). Two
            # homes asked at the same time to merge each other's person (a link relayed while
            # the other merge was under way) then agree on the direction, and every alias chain
            # leads to a smaller id: it never loops.
            self._redirect(target, current, touch, awaits)
            return
        elif self._here(anchor_key(current)):
            record, members, taken = self._take(current)
            held, stay = self._claimed(taken)
            for member in members:
                if self._here(member):
                    self._give(member, target)
            self._give(anchor_key(current), target)
            answer = answer._replace(
                source=current, record=record, identifiers=members, touches=[*held, touch]
            )
            self._send(anchor_key(target), answer)
            self._reroute(stay)
            return
        else:  # an anonymous person anchored elsewhere owns it: ask there
            self._give(key, target)
            self._send(anchor_key(current), Link(anchor_key(current), target, touch, awaits))
            return
        self._send(anchor_key(target), answer)

    def _redirect(self, person: str, to: str, touch: Touch, awaits: str | None) -> None:
        """Tell ``person``'s partition that it belongs to ``to`` (``_on_redirect``)."""
        self._send(anchor_key(person), Redirect(person, to, touch, awaits))

    def _answered(self, person: str, awaits: str | None) -> None:
        """The link ``person`` waits for (``awaits``) is answered: its parked touches may go."""
        if awaits is not None and self.awaiting.get(person) == awaits:
            self.awaiting.pop(person)
            self._dirty_persons.add(person)

    def _yields(self, target: str, anonymous: str, key: str) -> bool:
        """Whether the asking anonymous person ``target`` moves to ``anonymous`` (the person
        of ``key``, anchored here) rather than take it: two anonymous persons merge into the
        one whose id sorts first (``_on_link``)."""
        return (
            target.startswith("a:")
            and anonymous < target
            and not key.startswith(CUSTOMER_PREFIX)
            and (
                anonymous in self.parked
                or anonymous in self.awaiting
                or self.engine.has(anonymous, key)
            )
        )

    def _give(self, key: str, person: str) -> None:
        """``key`` (homed here) now belongs to ``person``."""
        if self._here(anchor_key(person)):
            self.aliases.pop(key, None)
            self.graph.own(key, person)
            self._dirty_persons.add(person)
        else:
            self.aliases[key] = person
            self.graph.owner.pop(key, None)
        self._dirty_ids.add(key)

    def _on_redirect(self, person: str, to: str, touch: Touch, awaits: str | None) -> None:
        """At an anonymous person's partition: it belongs to ``to`` (a customer, or an
        anonymous person whose id sorts first); move it there."""
        moved = self._follow(person)
        if moved != person:
            # It was merged into another person meanwhile (a customer, or an anonymous person
            # that sorts first): moving it again would overwrite where it went.
            self._answered(person, awaits)
            # its touch is the person's it is now, linked from there like any other, and so
            # are the touches parked behind its link (left parked, nothing would release them)
            self._route(touch, moved)
            self._release(person)
            return
        if anchor_key(person) in self.graph.blocked:
            # The person of a blocked identifier (a kiosk's anonymous visits) never moves to a
            # customer: only this touch goes, as in one process (a blocked identifier is not
            # used to resolve, so the touch is the customer's and the kiosk's person stays).
            self._send(anchor_key(to), Forward(to, touch))
            self._answered(person, awaits)
            self._release(person)
            return
        record, members, taken = self._take(person)
        held, stay = self._claimed(taken)
        for member in members:
            if self._here(member):
                self._give(member, to)
        self._give(anchor_key(person), to)
        self._send(anchor_key(to), Handoff(to, person, record, members, [], [*held, touch], None))
        self._reroute(stay)

    def _on_handoff(self, message: Handoff, token: Any) -> None:
        """Merge what the home handed over; ``token`` waits for every touch it carries
        (acknowledged once each is applied here or has left in a message, so a crash before
        that replays the hand-off). Waiting only for the latest one lost the others: it can
        leave again (another identifier to link) while they are still held for the watermark."""
        target = message.person
        touches = message.touches
        # the latest touch, by which a redelivery is recognised (not one refused by the error
        # policy: never applied)
        refused = self.refused
        kept = [t for t in touches if t.event_id not in refused] if refused else touches
        last = max(kept or touches, key=lambda t: (t.at, t.event_id))
        moved = self._follow(target)
        if moved != target or not self._here(anchor_key(target)):
            # the person itself moved meanwhile: the hand-off follows it
            self._wait_all(touches, token)
            self._send(anchor_key(moved), message._replace(person=moved, awaits=None))
            if self.awaiting.get(target) == message.awaits:
                self.awaiting.pop(target, None)
                self._dirty_persons.add(target)
            self._release(target)  # its parked touches follow it (as in ``_on_redirect``)
            return
        if self.engine.has_applied(target, last.event_id):
            # delivered again after a crash: the first delivery merged it and applied its
            # touches already (merging again would bring back journeys that have ended)
            self._answered(target, message.awaits)
            # The inputs still waiting for its touches are released: a hand-off on a hop within
            # this partition (a redelivered link answered by a redirect to a person anchored
            # here) has no token of its own, and the input that sent it waits for its touches.
            tokens = self._tokens
            for touch in touches:
                if touch.event_id in tokens and self.engine.has_applied(target, touch.event_id):
                    self._settle(tokens.pop(touch.event_id))
                self._absorbed(touch.event_id)  # (in the engine since the first delivery)
            self._release(target)
            if token is not None:
                self._done.append(token)
            return
        source, identifiers = message.source, message.identifiers
        merged_before = (
            source is not None
            and source != target
            and source not in self.engine.persons
            and bool(identifiers)
            and all(self.graph.owner.get(i) == target for i in identifiers)
        )
        if not merged_before:  # (a redelivery whose touches were still held: merged already)
            self._outputs += self.engine.absorb(
                source, target, message.record, identifiers, last.at, last.event_id
            )
        if message.foreign:
            self.foreign.setdefault(target, set()).update(message.foreign)
        self._dirty_persons.add(target)
        if message.awaits is not None and self.awaiting.get(target) == message.awaits:
            self.awaiting.pop(target)
        self._wait_all(touches, token)
        for touch in touches:
            keys = _keys(touch)
            customer = _customer_of(keys)
            if customer is not None and customer != target:
                # another customer's touch (a hand-off written before ``_claimed``): it goes to
                # its customer, and links nothing to this one
                self._route(touch, customer)
                continue
            key = self._needs_link(target, keys)
            if key is not None:  # another identifier to link first: the touch travels again
                self._link(target, key, touch)
                continue
            # Through the watermark like any touchpoint of this partition: the person's
            # anonymous touchpoints, forwarded here later because they reached their home after
            # the link, still come first (a journey starts at its first touchpoint).
            self._submit(target, touch)
        self._release(target)
