"""The demo that ``journeywatch run`` plays: the day's personas, sixty times faster.

A new user of ``make run`` should see in minutes what journeywatch is for: journeys on every
channel reaching every stage, drop-offs, a baseline to compare with, and an incident that pages.
Real customers take minutes to hours between steps and the default time-outs are hours to a
day, so the demo runs the business :data:`SPEED` times faster:

* the personas of the simulated day (pipeline/scenario.py) walk the default journeys with every
  pause between two of their touchpoints :data:`SPEED` times shorter, and never longer than
  :data:`MAX_GAP_MS`;
* the demo journeys file (:func:`demo_journeys`) is the default one with every time
  :data:`SPEED` times shorter and every stage time-out between 30 s and a minute (so drop-offs
  show within a minute, and a persona's pause never outlasts its stage);
* the alert rules are compressed by the same factor (``streams.monitoring.compress_rules``):
  their six-hour baseline is six minutes, their ten-minute windows ten seconds.

Nothing here is the production default: ``journeywatch run`` uses it only with
``JW_RUN_DEMO`` (on by default for the embedded run, never read by the production processes).
Event time is given by the caller, as everywhere in ``pipeline``.
"""

from __future__ import annotations

import heapq
import importlib.resources
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import yaml

from pipeline.scenario import INCIDENT_KINDS, PERSONAS, DaySimulator, Incident, _Persona

SPEED: Final = 60  # a minute of the customers' (and the alert rules') time passes in a second
MAX_GAP_MS: Final = 10_000  # the longest pause between two touchpoints of a demo persona
STAGE_TIMEOUT_MS: Final = (30_000, 60_000)  # every demo stage time-out lies between these
INCIDENT_MS: Final = 60_000  # how long an incident lasts unless told otherwise
# Buyers weigh more than in the simulated day: the drop-off alert wants at least 30 journeys
# entering a stage in its (compressed) ten minutes, and the incident hits the payment stage.
WEIGHTS: Final = {
    "browser_who_leaves": 20,
    "buyer": 40,
    "omnichannel_shopper": 10,
    "support_seeker": 10,
    "repeat_complainer": 5,
    "app_onboarder": 15,
}
PERSONAS_PER_S: Final = 20.0  # live arrivals: about 80 touchpoints a second
# The history before now: sparse for hours (the live page's baseline, the map's "before"),
# then the live rate for the last two minutes, so that the drop-offs due in the first minute
# of the live demo are those of a full minute of entries (a steady ratio from the start).
BACKFILL_HOURS: Final = 2.0
BACKFILL_PERSONAS_PER_S: Final = 0.25
BACKFILL_DENSE_MS: Final = 120_000
# the incidents the history had, ending this long before now (each ten minutes)
HISTORY_INCIDENTS: Final = (
    ("payment_outage", 100),
    ("app_checkout_crash", 80),
    ("call_centre_understaffed", 60),
    ("store_stockout", 40),
)

# Detector settings that are times (scaled); the others are thresholds on what a touchpoint
# says (a queue wait, a page's duration, a score) and stay as they are.
_TIMED_DETECTORS: Final = (
    "repeat_contact_within",
    "channel_switch_within",
    "repeated_attempts_within",
    "churn_after",
)
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _ms(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value * 1000)
    text = str(value).strip()
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * _UNIT_MS[unit])
    raise ValueError(f"not a duration: {value!r}")


def _duration(ms: int) -> str:
    return f"{ms}ms" if ms % 1000 else f"{ms // 1000}s"


def demo_journeys(text: str | None = None) -> str:
    """The journeys file of the demo: ``text`` (default: the shipped definitions) with every
    time :data:`SPEED` times shorter and stage time-outs clamped to :data:`STAGE_TIMEOUT_MS`."""
    if text is None:
        text = importlib.resources.files("pipeline").joinpath("defaults/journeys.yaml").read_text()
    document = yaml.safe_load(text)
    detectors = document.get("detectors", {})
    for name in _TIMED_DETECTORS:
        if name in detectors:
            detectors[name] = _duration(max(1000, _ms(detectors[name]) // SPEED))
    gaps = detectors.get("session_gap", {})
    for channel, gap in gaps.items():
        # longer than any pause of a demo persona: a visit or a call stays one session
        gaps[channel] = _duration(max(2 * MAX_GAP_MS, _ms(gap) // SPEED))
    low, high = STAGE_TIMEOUT_MS
    for journey in document["journeys"]:
        if "resume_within" in journey:
            journey["resume_within"] = _duration(_ms(journey["resume_within"]) // SPEED)
        for stage in journey["stages"]:
            stage["timeout"] = _duration(min(high, max(low, _ms(stage["timeout"]) // SPEED)))
    header = (
        "# journeywatch demo journeys (pipeline/demo.py): the shipped definitions with every "
        f"time {SPEED} times shorter.\n# Written by `journeywatch run` for its demo; never a "
        "production setting.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)


def _epoch_ms(event: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)


@dataclass(frozen=True)
class ActiveIncident:
    kind: str
    start: int  # epoch ms
    end: int


class DemoTraffic:
    """Personas arriving at :data:`PERSONAS_PER_S` a second, their touchpoints handed out when
    their (compressed) time comes, and incidents that hit the personas arriving meanwhile."""

    def __init__(self, seed: int, personas_per_s: float = PERSONAS_PER_S) -> None:
        self._sim = DaySimulator(seed, 0, 0)
        self._rng = random.Random(seed ^ 0xDE30)
        self._rate = personas_per_s
        # a run's own customer numbers: ClickHouse keeps earlier runs' customers
        self._number = (seed % 10_000) * 1_000_000
        self._pending: list[tuple[int, int, dict[str, Any]]] = []
        self._order = 0
        self._clock: int | None = None  # arrivals are drawn up to here
        self.incidents: list[ActiveIncident] = []
        self.produced = 0

    # --- incidents -------------------------------------------------------------------------
    def start_incident(self, kind: str, at: int, duration_ms: int = INCIDENT_MS) -> ActiveIncident:
        """From ``at`` (epoch ms) for ``duration_ms``, ``kind`` hits every arriving persona."""
        if kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident {kind!r}: one of {', '.join(INCIDENT_KINDS)}")
        incident = ActiveIncident(kind, at, at + duration_ms)
        self.incidents.append(incident)
        return incident

    def active_incidents(self, at: int) -> list[str]:
        return sorted({i.kind for i in self.incidents if i.start <= at < i.end})

    # --- personas --------------------------------------------------------------------------
    def _arrive(self, start: int) -> None:
        """One persona arriving at ``start``: its touchpoints queued at compressed times."""
        names = list(WEIGHTS)
        script = PERSONAS[self._rng.choices(names, [WEIGHTS[n] for n in names])[0]][0]
        # the scripts look incidents up in their own (uncompressed) time: an incident active
        # when the persona arrives is active for the whole of its walk
        self._sim.incidents = [Incident(kind, 0, 2**62) for kind in self.active_incidents(start)]
        self._number += 1
        persona = _Persona(self._sim, self._number, start)
        script(persona)
        events = sorted(persona.events, key=_epoch_ms)
        previous_original = start
        at = start
        for event in events:
            original = _epoch_ms(event)
            at += min(MAX_GAP_MS, max(0, original - previous_original) // SPEED)
            previous_original = original
            event["occurred_at"] = datetime.fromtimestamp(at / 1000, UTC).isoformat()
            self._order += 1
            heapq.heappush(self._pending, (at, self._order, event))

    def _arrivals(self, since: int, until: int, rate: float) -> None:
        """Poisson arrivals at ``rate`` a second in (since, until]."""
        at = float(since)
        while True:
            at += self._rng.expovariate(rate) * 1000
            if at > until:
                return
            self._arrive(int(at))

    def _due(self, now: int) -> list[dict[str, Any]]:
        due = []
        while self._pending and self._pending[0][0] <= now:
            due.append(heapq.heappop(self._pending)[2])
        self.produced += len(due)
        return due

    def backfill(
        self,
        now: int,
        hours: float = BACKFILL_HOURS,
        personas_per_s: float = BACKFILL_PERSONAS_PER_S,
        dense_ms: int = BACKFILL_DENSE_MS,
    ) -> list[dict[str, Any]]:
        """The touchpoints of the ``hours`` before ``now``, in event-time order: sparse, with
        the four incidents of :data:`HISTORY_INCIDENTS`, then the live rate for ``dense_ms``.
        The touchpoints of those personas that lie after ``now`` stay queued for
        :meth:`advance`."""
        begin = now - int(hours * 3_600_000)
        for kind, minutes_ago in HISTORY_INCIDENTS:
            end = now - minutes_ago * 60_000
            if end - 10 * 60_000 >= begin:
                self.start_incident(kind, end - 10 * 60_000, 10 * 60_000)
        self._arrivals(begin, now - dense_ms, personas_per_s)
        self._arrivals(now - dense_ms, now, self._rate)
        self._clock = now
        return self._due(now)

    def advance(self, now: int) -> list[dict[str, Any]]:
        """The touchpoints due by ``now`` (epoch ms) of the personas arrived by then."""
        if self._clock is None:
            self._clock = now
        if now > self._clock:
            self._arrivals(self._clock, now, self._rate)
            self._clock = now
        return self._due(now)

    @property
    def pending(self) -> int:
        return len(self._pending)
