"""``journeywatch collector``: the HTTP collector, ``POST /v1/events``.

Per-source API keys (constant-time comparison), single events or batches, every good event
acknowledged (202) only after the broker acknowledged it, every bad one reported with its
index and field. Raw e-mail addresses and phone numbers are hashed before anything leaves the
process and are never logged.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.collect import BodyError, ItemError, parse_body, prepare_event
from pipeline.contract import TouchpointEvent
from pipeline.settings import Settings
from sinks.metrics import (
    COLLECTOR_EVENTS,
    COLLECTOR_REQUEST_SECONDS,
    COLLECTOR_REQUESTS,
    LabelCache,
    exposition,
    set_worker_info,
)
from streams.openapi import openapi_document
from streams.process import GC_THRESHOLDS, use_uvloop
from streams.topics import RAW, bootstrap_servers, kafka_partition

log = logging.getLogger(__name__)
JSON_TYPES = {"application/json": False, "application/x-ndjson": True}


@dataclass(frozen=True)
class Source:
    name: str
    key: bytes
    channels: frozenset[str] | None


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response(
        {"error": message, **extra}, status=status, dumps=lambda o: orjson.dumps(o).decode()
    )


class Collector:
    def __init__(self, settings: Settings) -> None:
        if settings.pii_hash_key is None:
            raise ValueError(
                "JW_PII_HASH_KEY is not set: the collector hashes e-mail and phone with it"
            )
        if not settings.collector_api_keys:
            raise ValueError("JW_COLLECTOR_API_KEYS is empty: give every source an API key")
        self.settings = settings
        self.pii_key = settings.pii_hash_key.get_secret_value().encode()
        self.sources = [
            Source(
                name,
                key.key.get_secret_value().encode(),
                frozenset(c.value for c in key.channels) if key.channels is not None else None,
            )
            for name, key in settings.collector_api_keys.items()
        ]
        self.topic = settings.topic(RAW)
        self.producer: AIOKafkaProducer | None = None
        self.requests = LabelCache(COLLECTOR_REQUESTS)
        self.events = LabelCache(COLLECTOR_EVENTS)

    def authenticate(self, request: web.Request) -> Source | None:
        header = request.headers.get("Authorization", "")
        presented = (
            header[7:] if header.startswith("Bearer ") else request.headers.get("X-API-Key", "")
        )
        token = presented.encode()
        found = None
        for source in self.sources:  # compare with every key, in constant time each
            if hmac.compare_digest(source.key, token):
                found = source
        return found

    async def start(self, app: web.Application) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(self.settings),
            acks="all",
            linger_ms=2,
            enable_idempotence=False,
            client_id="journeywatch-collector",
        )
        await self.producer.start()

    async def stop(self, app: web.Application) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def post_events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await self._post_events(request)
        self.requests.get(str(response.status)).inc()
        COLLECTOR_REQUEST_SECONDS.observe(time.perf_counter() - started)
        return response

    async def _post_events(self, request: web.Request) -> web.Response:
        source = self.authenticate(request)
        if source is None:
            return web.json_response(
                {"error": "missing or unknown API key: send Authorization: Bearer <key>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="journeywatch"'},
            )
        ndjson = JSON_TYPES.get(request.content_type)
        if ndjson is None:
            return _error(
                415,
                f"content type {request.content_type!r} is not accepted",
                accepted=sorted(JSON_TYPES),
            )
        limit = self.settings.collector_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, f"the body is over {limit} bytes")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return _error(413, f"the body is over {limit} bytes")
        try:
            items = parse_body(body, ndjson)
        except BodyError as exc:
            return _error(400, str(exc))
        if len(items) > self.settings.collector_max_batch:
            return _error(
                413,
                f"at most {self.settings.collector_max_batch} events per request, got {len(items)}",
            )
        if not items:
            return _error(400, "no events in the request")
        received_at = datetime.now(UTC)
        good: list[TouchpointEvent] = []
        errors: list[ItemError] = []
        for index, item in enumerate(items):
            result = prepare_event(
                index,
                item,
                source=source.name,
                allowed_channels=source.channels,
                received_at=received_at,
                pii_key=self.pii_key,
                phone_country_code=self.settings.phone_default_country_code,
            )
            if isinstance(result, TouchpointEvent):
                good.append(result)
            else:
                errors.append(result)
        if errors:
            self.events.get("rejected").inc(len(errors))
        if not good:
            status = 403 if all(e.reason == "channel_not_allowed" for e in errors) else 400
            return _error(status, "no event was accepted", errors=[e.as_dict() for e in errors])
        try:
            await self._produce(good)
        except (TimeoutError, KafkaError) as exc:
            log.error(
                "the broker did not acknowledge events",
                extra={"error": str(exc), "events": len(good)},
            )
            return web.json_response(
                {"error": "the broker is unavailable, retry later"},
                status=503,
                headers={"Retry-After": "5"},
            )
        self.events.get("accepted").inc(len(good))
        return web.json_response(
            {"accepted": len(good), "rejected": [e.as_dict() for e in errors]},
            status=202,
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    async def _produce(self, events: list[TouchpointEvent]) -> None:
        """One record batch per partition (keyed by person, partitioned as Kafka's default
        partitioner would), then wait until the broker acknowledged every batch."""
        producer = self.producer
        assert producer is not None
        partitions = len(await producer.partitions_for(self.topic))
        batches: dict[int, Any] = {}
        futures = []
        for event in events:
            key = event.person_key()
            partition = kafka_partition(key, partitions)
            raw_key, value = key.encode(), event.to_json()
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=raw_key, value=value, timestamp=None) is None:  # full: send it
                futures.append(await producer.send_batch(batch, self.topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=raw_key, value=value, timestamp=None)
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, self.topic, partition=partition))
        await asyncio.wait_for(asyncio.gather(*futures), timeout=30)


def create_collector_app(settings: Settings) -> web.Application:
    collector = Collector(settings)
    app = web.Application(client_max_size=settings.collector_max_body_bytes + 1)
    app.on_startup.append(collector.start)
    app.on_cleanup.append(collector.stop)
    openapi = orjson.dumps(openapi_document())

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = collector.producer is not None
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        payload, content_type = exposition()
        return web.Response(body=payload, content_type=content_type.split(";")[0])

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    app.router.add_post("/v1/events", collector.post_events)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    return app


def run_collector(settings: Settings) -> None:
    set_worker_info("collector")
    use_uvloop()
    # Every request allocates a few hundred short-lived objects: with Python's default
    # thresholds the collector spends time (and tail latency) in the cyclic GC.
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    app = create_collector_app(settings)
    web.run_app(
        app,
        host=settings.web_host,
        port=settings.collector_port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=10,
    )
