"""``journeywatch collector``: the HTTP collector, ``POST /v1/events``.

Per-source API keys (constant-time comparison), single events or batches, every good event
acknowledged (202) only after the broker acknowledged it, every bad one reported with its
index and field. Raw e-mail addresses and phone numbers are hashed before anything leaves the
process and are never logged; those in free text are redacted or hashed (``JW_FREE_TEXT_PII``).

The key is checked before any body work; bodies are read whole and bounded, and gzip or
deflate is inflated by ``streams.httpbody`` (not by aiohttp, whose automatic decompression is
off), off the event loop. Malformed requests get a 400 that quotes no header, and no log line
holds a header value or an API key. The producer connects in the background: until it is
connected, and whenever the broker does not acknowledge in time, the answer is 503.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import hmac
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from pipeline.collect import BodyError, ItemError, parse_body, prepare_event
from pipeline.contract import TouchpointEvent
from pipeline.definitions import load_catalog
from pipeline.pii import FreeTextScrubber
from pipeline.segment import MESSAGE_TYPES, map_message, parse_segment_request
from pipeline.settings import Settings
from pipeline.snowplow import map_event, parse_post_body, parse_query
from pipeline.sourcemap import SourceMapping, UnmappedNames, Webhook, signature_valid, survey_event
from sinks.metrics import (
    COLLECTOR_EVENTS,
    COLLECTOR_REQUEST_SECONDS,
    COLLECTOR_REQUESTS,
    COLLECTOR_UNMAPPED,
    LabelCache,
    exposition,
    set_worker_info,
)
from streams.httpbody import BodyRejected, answer_early, content_encoding, read_decoded_body
from streams.logs import extra_fields
from streams.openapi import openapi_document
from streams.process import GC_THRESHOLDS, use_uvloop
from streams.topics import RAW, TopicSetupError, kafka_connection, kafka_partition

log = logging.getLogger(__name__)
# aiohttp's protocol errors and handler crashes are logged here (handler_args "logger").
http_log = logging.getLogger("journeywatch.collector.http")
JSON_TYPES = {"application/json": False, "application/x-ndjson": True}
PRODUCE_TIMEOUT_S = 10.0  # a produce the broker has not acknowledged by then is a 503
CONNECT_TIMEOUT_S = 10.0  # one attempt to connect the producer
RETRY_AFTER_S = 5
# The Segment-compatible API (docs/sources/segment.md): analytics.js posts text/plain (no CORS
# preflight), the server libraries application/json.
# analytics.js posts to /v1/t, /v1/p ... (the type's initial) and batches to /v1/b.
SEGMENT_PATHS = {
    "batch": "batch",
    "b": "batch",
    **{kind: kind for kind in MESSAGE_TYPES},
    **{kind[0]: kind for kind in MESSAGE_TYPES},
}
SEGMENT_CONTENT_TYPES = frozenset({"application/json", "text/plain"})
SEGMENT_CORS = {"Access-Control-Allow-Origin": "*"}
SEGMENT_RENAMED = {"email": "traits.email", "phone": "traits.phone"}  # where they came from
# The Snowplow tracker protocol (docs/sources/snowplow.md): the trackers' POST path and the
# GET pixel, each also under /k/<key>, for a tracker that cannot send a key header.
SNOWPLOW_POST = "/com.snowplowanalytics.snowplow/tp2"
SNOWPLOW_PIXEL = "/i"
SNOWPLOW_KEY_PREFIX = "/k/{key}"
SNOWPLOW_CONTENT_TYPES = SEGMENT_CONTENT_TYPES  # the JavaScript tracker may send text/plain
SNOWPLOW_RENAMED = {"email": "uid"}  # an e-mail address as uid becomes the hashed e-mail
# Survey webhooks (docs/sources.md): one response per request, as its source's webhook says.
WEBHOOK_PATH = "/v1/webhooks/{source}"
WEBHOOK_PREFIX = "/v1/webhooks/"
# A transparent 1x1 GIF, the answer to a pixel request.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# After an answer sent before the body was read (401, 413, 415), what the client still sends
# is dropped for at most JW_COLLECTOR_BODY_TIMEOUT_S and this many times the body limit.
DISCARD_LIMITS = 4


@dataclass(frozen=True)
class Source:
    name: str
    key: bytes
    channels: frozenset[str] | None


def webhook_secrets(settings: Settings) -> dict[str, bytes]:
    """The survey webhooks' HMAC secrets by name: ``JW_WEBHOOK_SECRETS``, else the JSON object
    in ``JW_WEBHOOK_SECRETS_FILE``."""
    if settings.webhook_secrets or settings.webhook_secrets_file is None:
        return {k: v.get_secret_value().encode() for k, v in settings.webhook_secrets.items()}
    path = settings.webhook_secrets_file
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the webhook secrets: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
        raise ValueError(f"{path}: must be a JSON object of secret names to strings")
    return {str(k): v.encode() for k, v in data.items()}


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response(
        {"error": message, **extra}, status=status, dumps=lambda o: orjson.dumps(o).decode()
    )


def _unauthorized(
    message: str = "missing or unknown API key: send Authorization: Bearer <key>",
) -> web.Response:
    return web.json_response(
        {"error": message},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="journeywatch"'},
    )


def _unavailable() -> web.Response:
    return web.json_response(
        {"error": "the broker is unavailable, retry later"},
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _segment_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """An error as Segment's libraries read it (``code`` and ``message``), with the collector's
    ``error`` beside them."""
    return web.json_response(
        {"success": False, "code": code, "message": message, "error": message, **extra},
        status=status,
        headers={**SEGMENT_CORS, **(headers or {})},
        dumps=lambda o: orjson.dumps(o).decode(),
    )


def _segment_unauthorized() -> web.Response:
    return _segment_error(
        401,
        "unauthorized",
        "missing or unknown write key: send it as the basic-auth user (or writeKey in the body)",
        {"WWW-Authenticate": 'Basic realm="journeywatch"'},
    )


def _snowplow_unauthorized() -> web.Response:
    return _unauthorized(
        "missing or unknown API key: put it in the collector URL (<collector>/k/<key>) or "
        "send Authorization: Bearer <key>"
    )


def _webhook_unauthorized() -> web.Response:
    return _unauthorized(
        "missing or unknown API key: send Authorization: Bearer <key> (or X-API-Key), "
        "or post to /k/<key>/v1/webhooks/<source>"
    )


_SEGMENT_CODES = {408: "timeout", 413: "too_large", 415: "unsupported_media_type"}
# A Segment request whose key is only in the body (analytics.js): it is read (bounded) first.
BODY_KEY = object()


def _snowplow_cors(request: web.BaseRequest) -> dict[str, str]:
    """CORS headers for a Snowplow request: the JavaScript tracker sends with credentials
    (``withCredentials``), which a browser refuses with ``*``: the origin is echoed (no cookie
    is ever read or set, so credentials grant nothing)."""
    origin = request.headers.get("Origin")
    if not origin:
        return {"Access-Control-Allow-Origin": "*"}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


@dataclass(frozen=True)
class Accepted:
    """What became of the events of one request (``Collector._accept``)."""

    accepted: int = 0
    skipped: int = 0
    errors: list[ItemError] = field(default_factory=list)
    refused: tuple[int, str] | None = None  # none accepted: the status and why (400 or 403)
    unavailable: bool = False  # the broker did not acknowledge: 503

    def rejected(self) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.errors]


def _refusal(errors: list[ItemError], noun: str) -> tuple[int, str]:
    """The answer when no event of a request was accepted: 403 when every one is on a channel
    the key may not send, else 400 naming the first error."""
    status = 403 if all(e.reason == "channel_not_allowed" for e in errors) else 400
    first = errors[0]
    where = f" (field {first.field})" if first.field else ""
    return status, (
        f"no {noun} was accepted; {noun} {first.index}: {first.reason}{where}: {first.detail}"
    )


def _rejected(exc: BodyRejected) -> web.Response:
    response = _error(exc.status, exc.message)
    if exc.status == 408:  # the client stopped sending: do not wait for the rest
        response.force_close()
    return response


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
        self.free_text = FreeTextScrubber(
            settings.free_text_pii, self.pii_key, settings.phone_default_country_code
        )
        self.sources = [
            Source(
                name,
                key.key.get_secret_value().encode(),
                frozenset(c.value for c in key.channels) if key.channels is not None else None,
            )
            for name, key in settings.collector_api_keys.items()
        ]
        # per source: its rules and survey webhook (the journeys file's sources:)
        self.mappings: dict[str, SourceMapping] = load_catalog(settings.journeys_file).sources
        self.secrets = webhook_secrets(settings)
        for name, mapping in self.mappings.items():
            signature = mapping.webhook.signature if mapping.webhook else None
            if signature is not None and signature.secret not in self.secrets:
                raise ValueError(
                    f"sources.{name}.webhook.signature.secret names {signature.secret!r}, which "
                    "JW_WEBHOOK_SECRETS (or JW_WEBHOOK_SECRETS_FILE) does not hold"
                )
        unkeyed = sorted(set(self.mappings) - {source.name for source in self.sources})
        if unkeyed:
            log.warning(
                "the journeys file maps sources no API key belongs to",
                extra={"sources": ", ".join(unkeyed)},
            )
        self.unmapped_names = UnmappedNames()
        self.unmapped = LabelCache(COLLECTOR_UNMAPPED)
        self.topic = settings.topic(RAW)
        self.producer: AIOKafkaProducer | None = None  # set once connected
        self._connecting: asyncio.Task[None] | None = None
        self.requests = LabelCache(COLLECTOR_REQUESTS)
        self.events = LabelCache(COLLECTOR_EVENTS)

    async def _read_body(self, request: web.Request, encoding: str | None) -> bytes:
        """The request's body, inflated, within the collector's size and time limits."""
        return await read_decoded_body(
            request,
            self.settings.collector_max_body_bytes,
            self.settings.collector_body_timeout_s,
            encoding,
        )

    def _prepare(
        self, index: int, item: Any, source: Source, received_at: datetime
    ) -> TouchpointEvent | ItemError:
        """One submitted event made safe and valid for ``source`` (pipeline/collect.py)."""
        return prepare_event(
            index,
            item,
            source=source.name,
            allowed_channels=source.channels,
            received_at=received_at,
            pii_key=self.pii_key,
            phone_country_code=self.settings.phone_default_country_code,
            max_age=self.settings.touchpoint_max_age,
            free_text=self.free_text,
        )

    def authenticate(self, request: web.Request) -> Source | None:
        header = request.headers.get("Authorization", "")
        presented = (
            header[7:] if header.startswith("Bearer ") else request.headers.get("X-API-Key", "")
        )
        try:  # a header is decoded with surrogateescape: a byte that is not UTF-8 is no key
            token = presented.encode("utf-8", "surrogateescape")
        except UnicodeError:
            return None
        return self.source_of(token)

    def authenticate_segment(self, request: web.Request) -> Source | object | None:
        """The source of a Segment request: the write key as the basic-auth user (the password
        is empty), or a collector key as ``/v1/events`` takes it; ``BODY_KEY`` when no key
        header was sent (analytics.js puts ``writeKey`` in the body); None: a bad key."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                credentials = base64.b64decode(header[6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                return None
            return self.source_of(credentials.split(b":", 1)[0])
        if header or "X-API-Key" in request.headers:
            return self.authenticate(request)
        return BODY_KEY

    def authenticate_snowplow(self, request: web.Request) -> Source | None:
        """The source of a Snowplow request: the key in the path (``/k/<key>/...``, which a
        tracker's collector URL can carry), else a key header as ``/v1/events`` takes it."""
        key = request.match_info.get("key")
        if key is None:
            return self.authenticate(request)
        return self.source_of(key.encode("utf-8", "surrogateescape"))

    def source_of(self, token: bytes) -> Source | None:
        """The source whose key ``token`` is (compared with every key, in constant time)."""
        found = None
        for source in self.sources:  # compare with every key, in constant time each
            if hmac.compare_digest(source.key, token):
                found = source
        return found

    async def start(self, app: web.Application) -> None:
        """Connect the producer in the background: the collector serves (503 for events,
        /readyz 503) while the broker is unavailable, and is ready once it is connected.

        The client options are built here: a configuration error (SASL without a user, say)
        raises ``TopicSetupError`` and the process fails at startup, naming it."""
        kafka_connection(self.settings)  # fails here, naming the setting, when unusable
        self._connecting = asyncio.create_task(self._connect(), name="producer-connect")

    async def _connect(self) -> None:
        delay = 0.25
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = AIOKafkaProducer(
                    **kafka_connection(self.settings),
                    acks="all",
                    linger_ms=2,
                    enable_idempotence=False,
                    client_id="journeywatch-collector",
                    request_timeout_ms=int(PRODUCE_TIMEOUT_S * 1000),
                )
                await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_S)
                await asyncio.wait_for(producer.partitions_for(self.topic), CONNECT_TIMEOUT_S)
            except asyncio.CancelledError:  # stopping before it connected
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                raise
            except Exception as exc:  # never end silently: the collector would answer 503 forever
                if isinstance(exc, TimeoutError | KafkaError | OSError):
                    log.warning(
                        "the broker is unavailable; the collector answers 503 until it connects",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                else:  # a bug or an unexpected client error: logged (once per window), retried
                    log.error(
                        "the producer failed to connect; the collector answers 503 and retries",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                        exc_info=True,
                    )
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer = producer
            log.info("the producer is connected")
            return

    async def stop(self, app: web.Application) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.producer is not None:
            await self.producer.stop()

    async def expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a bad key or an oversized body before the client
        sends it; otherwise tell it to go on."""
        refused = None
        limit = self.settings.collector_max_body_bytes
        refusal: Callable[[], web.Response]
        if request.path == "/v1/events":
            unknown, refusal = self.authenticate(request) is None, _unauthorized
        elif request.path.endswith(SNOWPLOW_POST):
            unknown, refusal = self.authenticate_snowplow(request) is None, _snowplow_unauthorized
        elif WEBHOOK_PREFIX in request.path:  # the key in a header or the path, as Snowplow's
            unknown, refusal = self.authenticate_snowplow(request) is None, _webhook_unauthorized
        else:
            unknown, refusal = self.authenticate_segment(request) is None, _segment_unauthorized
        if unknown:
            refused = refusal()
        elif request.content_length is not None and request.content_length > limit:
            refused = _error(413, f"the body is over {limit} bytes")
        if refused is not None:
            self.requests.get(str(refused.status)).inc()
            return await self._answer_early(request, refused)
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _error(417, "only Expect: 100-continue is understood")
        if request.version == HttpVersion11:  # as aiohttp's own expect handler
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def post_events(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        return await self._finish(request, started, await self._post_events(request))

    async def _finish(
        self, request: web.Request, started: float, response: web.StreamResponse
    ) -> web.StreamResponse:
        """Count and time the answer; one sent before the body was read (401, 413, 415) goes
        through ``_answer_early``."""
        self.requests.get(str(response.status)).inc()
        COLLECTOR_REQUEST_SECONDS.observe(time.perf_counter() - started)
        if response.status != 408 and not request.content.is_eof():  # 401, 413, 415
            return await self._answer_early(request, response)
        return response

    async def _answer_early(
        self, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        """An answer before the body was (wholly) read: sent, then the write side shut, then
        the rest of the body dropped (bounded in time and bytes) before the connection is
        closed, so that a client still sending reads the answer rather than a reset."""
        return await answer_early(
            request,
            response,
            self.settings.collector_body_timeout_s,
            DISCARD_LIMITS * self.settings.collector_max_body_bytes,
        )

    async def _post_events(self, request: web.Request) -> web.Response:
        source = self.authenticate(request)  # before any body work
        if source is None:  # the body is never read: post_events answers and drops it
            return _unauthorized()
        ndjson = JSON_TYPES.get(request.content_type)
        if ndjson is None:
            return _error(
                415,
                f"content type {request.content_type!r} is not accepted",
                accepted=sorted(JSON_TYPES),
            )
        try:
            encoding = content_encoding(request)
            body = await self._read_body(request, encoding)
        except BodyRejected as exc:
            return _rejected(exc)
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
            result = self._prepare(index, item, source, received_at)
            if isinstance(result, TouchpointEvent):
                good.append(result)
            else:
                errors.append(result)
        if errors:
            self.events.get("rejected").inc(len(errors))
        if not good:
            status = 403 if all(e.reason == "channel_not_allowed" for e in errors) else 400
            return _error(status, "no event was accepted", errors=[e.as_dict() for e in errors])
        if not await self._deliver(good):
            return _unavailable()
        return web.json_response(
            {"accepted": len(good), "rejected": [e.as_dict() for e in errors]},
            status=202,
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    async def _deliver(self, good: list[TouchpointEvent]) -> bool:
        """Produce ``good`` and wait for the broker's acknowledgement; False: the broker is
        not connected or did not acknowledge in time (the caller answers 503)."""
        if self.producer is None:  # not connected yet
            return False
        try:
            await asyncio.wait_for(self._produce(self.producer, good), PRODUCE_TIMEOUT_S)
        except (TimeoutError, KafkaError) as exc:
            log.error(
                "the broker did not acknowledge events",
                extra={"error": f"{type(exc).__name__}: {exc}", "events": len(good)},
            )
            return False
        self.events.get("accepted").inc(len(good))
        return True

    async def post_segment(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/batch``, ``/v1/track`` ...: the Segment HTTP tracking API."""
        started = time.perf_counter()
        kind = SEGMENT_PATHS[request.match_info["kind"]]
        return await self._finish(request, started, await self._post_segment(request, kind))

    async def _post_segment(self, request: web.Request, kind: str) -> web.Response:
        auth = self.authenticate_segment(request)  # before any body work
        if auth is None:
            return _segment_unauthorized()
        if request.content_type not in SEGMENT_CONTENT_TYPES:
            return _segment_error(
                415,
                "unsupported_media_type",
                f"content type {request.content_type!r} is not accepted: send application/json",
            )
        try:
            encoding = content_encoding(request)
            if auth is BODY_KEY and encoding is not None:  # never inflate before the key check
                return _segment_unauthorized()
            body = await self._read_body(request, encoding)
        except BodyRejected as exc:
            response = _segment_error(
                exc.status, _SEGMENT_CODES.get(exc.status, "bad_request"), exc.message
            )
            if exc.status == 408:
                response.force_close()
            return response
        try:
            parsed = parse_segment_request(body, kind)
        except BodyError as exc:
            if auth is BODY_KEY:  # nothing is said about the body of an unauthenticated request
                return _segment_unauthorized()
            return _segment_error(400, "invalid_request", str(exc))
        if isinstance(auth, Source):
            source = auth
        else:
            key = parsed.write_key.encode("utf-8", "surrogateescape") if parsed.write_key else b""
            found = self.source_of(key) if key else None
            if found is None:
                return _segment_unauthorized()
            source = found
        limit = self.settings.collector_max_batch
        if len(parsed.messages) > limit:
            return _segment_error(
                413, "too_large", f"at most {limit} messages per batch, got {len(parsed.messages)}"
            )
        if not parsed.messages:
            return _segment_error(400, "invalid_request", "batch: no messages in the request")
        received_at = datetime.now(UTC)
        mapping = self.mappings.get(source.name)
        mapped, unmapped = _with_names(
            parsed.messages,
            lambda index, message, names: map_message(
                index, message, parsed, received_at, mapping, names
            ),
        )
        outcome = await self._accept(mapped, source, received_at, SEGMENT_RENAMED, "message")
        self._count_unmapped(source, unmapped, outcome)
        if outcome.refused is not None:
            status, message = outcome.refused
            return _segment_error(status, "invalid_request", message, errors=outcome.rejected())
        if outcome.unavailable:
            return _segment_error(
                503,
                "unavailable",
                "the broker is unavailable, retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        return web.json_response(
            {
                "success": True,
                "accepted": outcome.accepted,
                "skipped": outcome.skipped,
                "rejected": outcome.rejected(),
            },
            headers=SEGMENT_CORS,
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    async def _accept(
        self,
        mapped: Iterable[tuple[int, dict[str, Any] | ItemError | None]],
        source: Source,
        received_at: datetime,
        renamed: Mapping[str, str],
        noun: str,
    ) -> Accepted:
        """Events mapped from another protocol (None: accepted and skipped), each made safe
        and valid as a ``/v1/events`` event (``_prepare``; ``renamed``: the fields its errors
        name as the protocol calls them; ``noun``: what the protocol calls an event), then
        delivered when any is good."""
        good: list[TouchpointEvent] = []
        errors: list[ItemError] = []
        skipped = 0
        for index, item in mapped:
            if item is None:
                skipped += 1
                continue
            result = (
                item
                if isinstance(item, ItemError)
                else self._prepare(index, item, source, received_at)
            )
            if isinstance(result, TouchpointEvent):
                good.append(result)
            elif result.field in renamed:
                errors.append(ItemError(index, result.reason, renamed[result.field], result.detail))
            else:
                errors.append(result)
        if errors:
            self.events.get("rejected").inc(len(errors))
        if errors and not good:
            return Accepted(skipped=skipped, errors=errors, refused=_refusal(errors, noun))
        if good and not await self._deliver(good):
            return Accepted(errors=errors, unavailable=True)
        return Accepted(len(good), skipped, errors)

    def _count_unmapped(self, source: Source, unmapped: dict[int, str], outcome: Accepted) -> None:
        """Count the stored events no rule of their source mapped, by (bounded) name."""
        if not unmapped or outcome.accepted == 0:
            return
        refused = {error.index for error in outcome.errors}
        for index, name in unmapped.items():
            if index not in refused:
                label = self.unmapped_names.label(source.name, name)
                self.unmapped.get(source.name, label).inc()

    async def post_webhook(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/webhooks/<source>``: one survey response, as the source's webhook in
        the journeys file says."""
        started = time.perf_counter()
        return await self._finish(request, started, await self._post_webhook(request))

    async def _post_webhook(self, request: web.Request) -> web.Response:
        source = self.authenticate_snowplow(request)  # a key header, or /k/<key> in the path
        if source is None:
            return _webhook_unauthorized()
        name = request.match_info["source"]
        if name != source.name:
            return _error(403, f"this API key belongs to another source than {name!r}")
        mapping = self.mappings.get(name)
        webhook = mapping.webhook if mapping is not None else None
        if webhook is None:
            return _error(
                404, f"no webhook for {name!r}: the journeys file has no sources.{name}.webhook"
            )
        if request.content_type != "application/json":
            return _error(
                415,
                f"content type {request.content_type!r} is not accepted",
                accepted=["application/json"],
            )
        try:
            body = await self._read_body(request, content_encoding(request))
        except BodyRejected as exc:
            return _rejected(exc)
        signature = webhook.signature
        if signature is not None and not signature_valid(
            signature, self.secrets[signature.secret], body, request.headers.get(signature.header)
        ):
            return _error(401, f"missing or bad signature in {signature.header}")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not valid JSON: {exc}")
        received_at = datetime.now(UTC)
        item = survey_event(webhook, document, body, received_at)
        event_id = item.get("event_id") if isinstance(item, dict) else None
        outcome = await self._accept(
            [(0, item)], source, received_at, _webhook_renamed(webhook), "response"
        )
        if outcome.refused is not None:
            status, message = outcome.refused
            return _error(status, message, errors=outcome.rejected())
        if outcome.unavailable:
            return _unavailable()
        return web.json_response({"accepted": 1, "event_id": event_id}, status=202)

    async def post_snowplow(self, request: web.Request) -> web.StreamResponse:
        """``POST /com.snowplowanalytics.snowplow/tp2``: the Snowplow trackers' batches."""
        return await self._snowplow(request, self._post_snowplow)

    async def get_pixel(self, request: web.Request) -> web.StreamResponse:
        """``GET /i``: one tracker payload in the query string, answered with a 1x1 GIF."""
        return await self._snowplow(request, self._get_pixel)

    async def _snowplow(
        self, request: web.Request, handle: Callable[[web.Request], Awaitable[web.Response]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handle(request)
        response.headers.update(_snowplow_cors(request))
        return await self._finish(request, started, response)

    async def _post_snowplow(self, request: web.Request) -> web.Response:
        source = self.authenticate_snowplow(request)  # before any body work
        if source is None:
            return _snowplow_unauthorized()
        if request.content_type not in SNOWPLOW_CONTENT_TYPES:
            return _error(
                415,
                f"content type {request.content_type!r} is not accepted",
                accepted=sorted(SNOWPLOW_CONTENT_TYPES),
            )
        try:
            body = await self._read_body(request, content_encoding(request))
        except BodyRejected as exc:
            return _rejected(exc)
        try:
            payloads = parse_post_body(body)
        except BodyError as exc:
            return _error(400, str(exc))
        answer = await self._store_snowplow(payloads, source)
        if isinstance(answer, web.Response):
            return answer
        return web.json_response(
            {"accepted": answer.accepted, "skipped": answer.skipped, "rejected": answer.rejected()},
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    async def _get_pixel(self, request: web.Request) -> web.Response:
        source = self.authenticate_snowplow(request)
        if source is None:
            return _snowplow_unauthorized()
        try:
            payloads = parse_query(request.query)
        except BodyError as exc:
            return _error(400, str(exc))
        answer = await self._store_snowplow(payloads, source)
        if isinstance(answer, web.Response):
            return answer
        return web.Response(
            body=PIXEL,
            content_type="image/gif",
            headers={"Cache-Control": "no-cache, no-store, must-revalidate"},
        )

    async def _store_snowplow(self, payloads: list[Any], source: Source) -> Accepted | web.Response:
        """The tracker payloads of a request mapped, prepared and delivered; an error answer
        when none was accepted or the broker did not acknowledge."""
        limit = self.settings.collector_max_batch
        if len(payloads) > limit:
            return _error(413, f"at most {limit} events per request, got {len(payloads)}")
        if not payloads:
            return _error(400, "data: no events in the request")
        received_at = datetime.now(UTC)
        mapping = self.mappings.get(source.name)
        mapped, unmapped = _with_names(
            payloads,
            lambda index, payload, names: map_event(index, payload, received_at, mapping, names),
        )
        outcome = await self._accept(mapped, source, received_at, SNOWPLOW_RENAMED, "event")
        self._count_unmapped(source, unmapped, outcome)
        if outcome.refused is not None:
            status, message = outcome.refused
            return _error(status, message, errors=outcome.rejected())
        if outcome.unavailable:
            return _unavailable()
        return outcome

    async def _produce(self, producer: AIOKafkaProducer, events: list[TouchpointEvent]) -> None:
        """One record batch per partition (keyed by person, partitioned as Kafka's default
        partitioner would), then wait until the broker acknowledged every batch (the caller
        bounds the whole in time: metadata waits included)."""
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
        await asyncio.gather(*futures)


def _with_names(
    items: list[Any],
    map_one: Callable[[int, Any, list[str]], dict[str, Any] | ItemError | None],
) -> tuple[Iterable[tuple[int, dict[str, Any] | ItemError | None]], dict[int, str]]:
    """Each item mapped (for ``Collector._accept``), and, filled as they are, the index and
    event name of those no rule of their source mapped."""
    unmapped: dict[int, str] = {}

    def each() -> Iterable[tuple[int, dict[str, Any] | ItemError | None]]:
        for index, item in enumerate(items):
            names: list[str] = []
            result = map_one(index, item, names)
            if names:
                unmapped[index] = names[0]
            yield index, result

    return each(), unmapped


def _webhook_renamed(webhook: Webhook) -> dict[str, str]:
    """The contract fields a survey event's errors name, as the JSON paths they came from."""
    renamed: dict[str, str] = {webhook.kind: webhook.score}
    for into, path in (
        ("email", webhook.email),
        ("customer_id", webhook.customer_id),
        ("occurred_at", webhook.occurred_at),
        ("event_id", webhook.response_id),
    ):
        if path is not None:
            renamed[into] = path
    return renamed


class _HeaderSafeRequestHandler(RequestHandler):
    """aiohttp's protocol with error answers that quote nothing the client sent: aiohttp's own
    400 for a malformed request repeats the offending header line (an API key, say)."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 and not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, None)
        if isinstance(exc, LineTooLong):
            reason = "request line or header too long"
        elif isinstance(exc, BadHttpMethod | BadStatusLine):
            reason = "malformed request line"
        else:
            reason = "malformed request header"
        http_log.warning(
            "malformed HTTP request refused",
            extra={"status": status, "reason": reason, "error": type(exc).__name__},
        )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent on this connection")
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        return response


class _HeaderSafeServer(Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _HeaderSafeRequestHandler
        return handler


class CollectorRunner(web.AppRunner):
    """The runner of the collector app: its connections use ``_HeaderSafeRequestHandler``."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _HeaderSafeServer
        return server


class _NoHttpDetails(logging.Filter):
    """aiohttp logs a malformed request with its exception, whose text quotes the raw header
    line: such records keep their message, without the exception or its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg} ({type(exc).__name__}; details withheld)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class RedactSecrets(logging.Filter):
    """A handler filter: any of ``secrets`` in a record (message, arguments, extra fields of
    any type, exception) is replaced by ``[redacted]`` before the record is written.

    An extra field that is not a string is written as ``str(value)`` (``JsonFormatter``): a
    dict, list or bytes holding a secret is replaced by its cleaned text. Each secret is also
    looked for as ``repr`` and JSON escape it (a quote or backslash in it, say)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        forms = {
            form
            for secret in secrets
            if secret
            for form in (
                secret,
                repr(secret)[1:-1],
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
                repr(secret.encode("utf-8", "surrogateescape"))[2:-1],
            )
        }
        self._secrets = sorted(forms, key=len, reverse=True)  # the longest form first

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # the handler would print the arguments with its error: not those
            record.msg, record.args = f"unformattable log record: {record.msg!s:.200}", None
            message = record.msg
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            if self._clean(text) != text:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg} (exception withheld: it held a secret)"
        for key, value in extra_fields(record).items():
            if value is None or isinstance(value, bool):
                continue
            text = value if isinstance(value, str) else str(value)  # as JsonFormatter writes it
            cleaned = self._clean(text)
            if cleaned != text:
                setattr(record, key, cleaned)
        return True


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret in ``settings``: the API keys, and every secret setting (the SASL
    password, the PII hash key, the Alertmanager password, ...)."""
    secrets = [k.key.get_secret_value() for k in settings.collector_api_keys.values()]
    with contextlib.suppress(ValueError):
        secrets.extend(secret.decode() for secret in webhook_secrets(settings).values())
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            secrets.append(value.get_secret_value())
    return secrets


def install_log_safety(settings: Settings) -> None:
    """No header value, no API key and no other configured secret in any log line of this
    process."""
    safe = _NoHttpDetails()
    for name in ("aiohttp.server", "aiohttp.access", http_log.name):
        logging.getLogger(name).addFilter(safe)
    secrets = configured_secrets(settings)
    redact = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)


def create_collector_app(settings: Settings) -> web.Application:
    collector = Collector(settings)
    app = web.Application(
        client_max_size=settings.collector_max_body_bytes + 1,
        # aiohttp would inflate gzip itself, on the event loop and before the handler has
        # checked the key; streams.httpbody does it after authentication, bounded.
        # No lingering close by aiohttp (2 s at most, then a reset for a slow client):
        # Collector._answer_early shuts the write side and drops the rest of an unread body
        # within JW_COLLECTOR_BODY_TIMEOUT_S and DISCARD_LIMITS times the body limit.
        handler_args={"auto_decompress": False, "logger": http_log, "lingering_time": 0},
    )
    app.on_startup.append(collector.start)
    app.on_cleanup.append(collector.stop)
    openapi = orjson.dumps(openapi_document())

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = collector.producer is not None
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        payload, content_type = exposition(names=request.query.getall("name[]", []))
        return web.Response(body=payload, content_type=content_type.split(";")[0])

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    app.router.add_post(
        "/v1/events", collector.post_events, expect_handler=collector.expect_continue
    )

    async def segment_preflight(request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                **SEGMENT_CORS,
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
                "Access-Control-Max-Age": "86400",
            },
        )

    segment_path = "/v1/{kind:" + "|".join(SEGMENT_PATHS) + "}"
    app.router.add_post(
        segment_path, collector.post_segment, expect_handler=collector.expect_continue
    )
    app.router.add_route("OPTIONS", segment_path, segment_preflight)

    async def snowplow_preflight(request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                **_snowplow_cors(request),
                "Access-Control-Allow-Methods": "POST, GET",
                "Access-Control-Allow-Headers": (
                    "Authorization, X-API-Key, Content-Type, Content-Encoding, SP-Anonymous"
                ),
                "Access-Control-Max-Age": "86400",
            },
        )

    for prefix in ("", SNOWPLOW_KEY_PREFIX):
        app.router.add_post(
            prefix + SNOWPLOW_POST,
            collector.post_snowplow,
            expect_handler=collector.expect_continue,
        )
        app.router.add_route("OPTIONS", prefix + SNOWPLOW_POST, snowplow_preflight)
        # no HEAD: it would store the event as a GET does
        app.router.add_get(prefix + SNOWPLOW_PIXEL, collector.get_pixel, allow_head=False)
        app.router.add_post(
            prefix + WEBHOOK_PATH, collector.post_webhook, expect_handler=collector.expect_continue
        )
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    return app


async def serve_collector(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve the collector until ``stop`` is set (or SIGINT / SIGTERM when it is None)."""
    app = create_collector_app(settings)
    runner = CollectorRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.web_host, settings.collector_port)
        await site.start()
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_collector(settings: Settings) -> None:
    set_worker_info("collector")
    install_log_safety(settings)
    use_uvloop()
    # Every request allocates a few hundred short-lived objects: with Python's default
    # thresholds the collector spends time (and tail latency) in the cyclic GC.
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    try:
        asyncio.run(serve_collector(settings))
    except TopicSetupError as exc:  # raised by Collector.start: the Kafka settings are unusable
        raise SystemExit(f"journeywatch collector: {exc}") from None
    except ValueError as exc:  # the journeys file or the webhook secrets are unusable
        raise SystemExit(f"journeywatch collector: {exc}") from None
