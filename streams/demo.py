"""The demo of ``journeywatch run`` (``JW_RUN_DEMO``, pipeline/demo.py): its journeys file and
alert rules, the backfill of the last hours, the live traffic with its scheduled incidents, and
``journeywatch simulate incident NAME``, which asks a running demo for one by hand.

The backfill and the live touchpoints go to ``touchpoints.raw`` keyed by the person's strongest
identifier, as the collector sends them, and are validated by the ingest like any other.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

from pipeline.contract import IDENTIFIER_FIELDS
from pipeline.demo import (
    BACKFILL_HOURS,
    INCIDENT_MS,
    SPEED,
    ActiveIncident,
    DemoTraffic,
    demo_journeys,
)
from pipeline.settings import Settings
from streams.monitoring import RULES_DIR, compress_rules
from streams.producer import raw_producer
from streams.topics import RAW

DEMO_DIR = "demo"  # under data_dir: the journeys file, the rules, incident requests
INCIDENT_REQUEST = "incident-request.json"
SCHEDULED_INCIDENT = "payment_outage"  # the one whose drop-off spike pages (online_purchase)
MAP_JOURNEY = "online_purchase"


def demo_dir(settings: Settings) -> Path:
    return settings.data_dir / DEMO_DIR


def demo_settings(settings: Settings) -> Settings:
    """The settings of the demo's processes: the demo journeys (unless ``JW_JOURNEYS_FILE``
    names a file) and a five-minute live window. Written to ``data_dir/demo/``."""
    directory = demo_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    update: dict[str, Any] = {}
    if settings.journeys_file is None:
        path = directory / "journeys.yaml"
        path.write_text(demo_journeys())
        update["journeys_file"] = path
    if "live_window_minutes" not in settings.model_fields_set:
        update["live_window_minutes"] = 5
    return settings.model_copy(update=update)


def demo_rule_files(settings: Settings) -> list[Path]:
    """The shipped alert rules compressed :data:`pipeline.demo.SPEED` times, as files."""
    directory = demo_dir(settings) / "rules"
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for shipped in sorted(RULES_DIR.glob("*.yml")):
        compressed = compress_rules(yaml.safe_load(shipped.read_text()), SPEED)
        path = directory / shipped.name
        path.write_text(
            f"# {shipped.name} with every duration {SPEED} times shorter (journeywatch run's "
            "demo)\n" + yaml.safe_dump(compressed, sort_keys=False)
        )
        files.append(path)
    return files


def person_key(event: dict[str, Any]) -> bytes:
    """The key the collector gives an event: its strongest identifier."""
    name = next(n for n in IDENTIFIER_FIELDS if event.get(n))
    return f"{name}:{event[name]}".encode()


def produce(producer: Any, settings: Settings, events: list[dict[str, Any]]) -> None:
    topic = settings.topic(RAW)
    for event in events:
        producer.send(topic, key=person_key(event), value=orjson.dumps(event))


def now_ms() -> int:
    return int(time.time() * 1000)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S UTC")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def map_link(base: str, incident: ActiveIncident) -> str:
    """The journey map of the journeys started during ``incident`` (and the minute after),
    compared with the half hour before it."""
    return (
        f"{base}/map/{MAP_JOURNEY}?since={_iso(incident.start)}"
        f"&until={_iso(incident.end + 60_000)}"
        f"&compare_since={_iso(incident.start - 30 * 60_000)}&compare_until={_iso(incident.start)}"
    )


# --- incidents by hand -----------------------------------------------------------------------
def request_incident(settings: Settings, kind: str, seconds: float, wait_s: float = 5.0) -> bool:
    """Ask the demo running on ``settings.data_dir`` for an incident; True once it took the
    request (it removes the file within a second), False when nothing did."""
    directory = demo_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / INCIDENT_REQUEST
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"kind": kind, "seconds": seconds}))
    os.replace(temporary, path)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return False


def take_incident_request(settings: Settings) -> tuple[str, float] | None:
    path = demo_dir(settings) / INCIDENT_REQUEST
    try:
        request = json.loads(path.read_text())
        path.unlink()
    except (FileNotFoundError, ValueError):
        return None
    return str(request.get("kind")), float(request.get("seconds") or INCIDENT_MS / 1000)


# --- the backfill ----------------------------------------------------------------------------
@dataclass
class Backfill:
    events: int
    hours: float
    seconds: float  # how long the workers and the sink took


def backfill(
    settings: Settings,
    traffic: DemoTraffic,
    stored: Callable[[], int | None],
    timeout_s: float = 180.0,
) -> Backfill:
    """Produce the last hours of ``traffic`` and wait until ClickHouse holds them
    (``stored()``: its touchpoint count, None while it cannot say)."""
    started = time.monotonic()
    before = stored() or 0
    events = traffic.backfill(now_ms())
    producer = raw_producer(settings)
    try:
        produce(producer, settings, events)
        producer.flush()
    finally:
        producer.close(timeout=5)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        count = stored()
        if count is not None and count >= before + len(events):
            break
        time.sleep(0.5)
    return Backfill(len(events), BACKFILL_HOURS, time.monotonic() - started)


# --- live traffic ----------------------------------------------------------------------------
class DemoThread(threading.Thread):
    """The demo's live traffic until stopped: ``traffic``'s touchpoints when their time
    comes, the scheduled incident, and incidents asked for by hand."""

    def __init__(
        self,
        settings: Settings,
        traffic: DemoTraffic | None = None,
        seed: int | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        super().__init__(name="demo", daemon=True)
        self._settings = settings
        self.seed = seed if seed is not None else secrets.randbits(31)
        self.traffic = traffic or DemoTraffic(self.seed)
        self._say = say
        self._stop_event = threading.Event()
        self.started_ms = now_ms()
        after = settings.demo_incident_after_s
        self.next_incident_ms: int | None = (
            self.started_ms + int(after * 1000) if after > 0 else None
        )
        self.error: Exception | None = None
        self.produced = 0

    def stop(self) -> None:
        self._stop_event.set()

    def _incidents(self, at: int) -> None:
        requested = take_incident_request(self._settings)
        if requested is not None:
            kind, seconds = requested
            try:
                incident = self.traffic.start_incident(kind, at, int(seconds * 1000))
            except ValueError as exc:
                self._say(f"journeywatch demo: {exc}")
            else:
                self._announce(incident, "started by hand")
        if self.next_incident_ms is not None and at >= self.next_incident_ms:
            incident = self.traffic.start_incident(SCHEDULED_INCIDENT, at)
            self.next_incident_ms = at + int(self._settings.demo_incident_every_s * 1000)
            self._announce(incident, "scheduled")

    def _announce(self, incident: ActiveIncident, how: str) -> None:
        base = f"http://127.0.0.1:{self._settings.status_port}"
        self._say(
            f"Demo: incident {incident.kind} ({how}) from {_utc(incident.start)} to "
            f"{_utc(incident.end)}."
            + (
                f" Drop-offs at online_purchase / payment from about "
                f"{_utc(incident.start + 30_000)}; the JourneyDropOffSpike alert on the live page "
                f"({base}/) about a minute after it began; the map before/after: "
                f"{map_link(base, incident)}"
                if incident.kind == SCHEDULED_INCIDENT
                else f" Watch the live page ({base}/) and the journey maps ({base}/map)."
            )
        )

    def run(self) -> None:
        try:
            producer = raw_producer(self._settings)
        except Exception as exc:
            self.error = exc
            return
        try:
            while not self._stop_event.is_set():
                at = now_ms()
                self._incidents(at)
                events = self.traffic.advance(at)
                produce(producer, self._settings, events)
                self.produced += len(events)
                self._stop_event.wait(0.1)
            producer.flush()
        except Exception as exc:
            self.error = exc
        finally:
            producer.close(timeout=5)


def incident_times(thread: DemoThread) -> tuple[int, int] | None:
    """When the first scheduled incident starts and when its alert should show (epoch ms)."""
    if thread.next_incident_ms is None:
        return None
    # drop-offs one payment time-out (30 s) after it starts, the alert's 10 s ratio window
    # and its `for` (5 s) after that, and rule evaluations each second
    return thread.next_incident_ms, thread.next_incident_ms + 60_000


def incident_time_text(ms: int) -> str:
    seconds = max(0, round((ms - now_ms()) / 1000))
    return f"{_utc(ms)} (in {timedelta(seconds=seconds)})"
