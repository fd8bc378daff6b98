"""Producing touchpoint events to ``touchpoints.raw`` with kafka-python."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime

import orjson
from kafka import KafkaProducer

from pipeline.settings import Settings
from pipeline.simulator import SimpleTrafficSource
from streams.topics import RAW, kafka_connection


def raw_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(
        **kafka_connection(settings),
        client_id="journeywatch-producer",
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        retries=10,
    )


class SimulatorThread(threading.Thread):
    """Steady simulated traffic at ``rate`` events per second, until stopped."""

    def __init__(
        self, settings: Settings, rate: float, seed: int | None, limit: int | None = None
    ) -> None:
        super().__init__(name="simulator", daemon=True)
        self._settings = settings
        self._rate = rate
        # no seed: a fresh one, so that this run's event ids are not an earlier run's
        self.seed = seed if seed is not None else secrets.randbits(31)
        self._source = SimpleTrafficSource(self.seed)
        self._stop_event = threading.Event()
        self._limit = limit
        self.produced = 0
        self.error: Exception | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            producer = raw_producer(self._settings)
        except Exception as exc:
            self.error = exc
            return
        topic = self._settings.topic(RAW)
        tick = 0.1
        started = time.monotonic()
        try:
            while not self._stop_event.is_set():
                due = int((time.monotonic() - started) * self._rate) - self.produced
                if self._limit is not None:
                    due = min(due, self._limit - self.produced)
                now = datetime.now(UTC)
                for event in self._source.events(now, max(due, 0)):
                    producer.send(topic, value=orjson.dumps(event))
                    self.produced += 1
                if self._limit is not None and self.produced >= self._limit:
                    break
                self._stop_event.wait(tick)
            producer.flush()
        except Exception as exc:
            self.error = exc
        finally:
            producer.close(timeout=5)
