"""The ClickHouse sink role: agents that write topics to tables, and the read API.

Each agent takes a batch, groups it by partition, writes each partition's rows in one insert
(off the event loop), and only then lets Faust acknowledge the batch, so offsets are committed
after ClickHouse holds the rows. While ClickHouse is unreachable the agent keeps retrying the
same batch: consumption stops (backpressure) and memory stays bounded by one batch.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, cast

import faust
import orjson
from faust.streams import Stream
from faust.types import EventT, StreamT

from pipeline.definitions import load_catalog
from pipeline.journeymap import MAP_CSS, render_fragment
from pipeline.settings import Settings
from sinks.clickhouse.client import connect
from sinks.clickhouse.journey_map import MapRequest, MapRequestError, answer_map, maps_of
from sinks.clickhouse.live import JourneyShape, live_snapshot
from sinks.clickhouse.migrations import apply_migrations
from sinks.clickhouse.queries import pipeline_stats, stored_event_ids
from sinks.clickhouse.rows import (
    FAILED_EVENT_COLUMNS,
    JOURNEY_ERROR_COLUMNS,
    OUTPUT_COLUMNS,
    TOUCHPOINT_COLUMNS,
    failed_event_row,
    journey_error_row,
    output_row,
    touchpoint_row,
)
from sinks.clickhouse.writer import ClickHouseWriter, PartitionBatch
from sinks.metrics import (
    RUN_RESTARTS,
    SINK_DUPLICATES_SKIPPED,
    SINK_ERRORS,
    SINK_ROWS,
    SINK_WRITE_SECONDS,
)
from streams.app import Readiness
from streams.live import LiveFeed
from streams.mapexport import FONT_FILES, font_path, map_bytes
from streams.monitoring import alertmanager_credentials
from streams.runbooks import runbook_answer
from streams.supervisor import RUN_STATUS_FILE, live_summary, read_status, restarts_by_process
from streams.topics import (
    BY_PERSON,
    CONTROL_HEADER,
    DLQ,
    EXPERIENCE_MOMENTS,
    JOURNEY_EVENTS,
    JOURNEYS_DLQ,
)
from streams.webauth import WebAccess, register_signin

log = logging.getLogger(__name__)

RowBuilder = Callable[[EventT[Any], str], list[Any]]


def _record_write(table: str, rows: int, seconds: float, ok: bool) -> None:
    SINK_WRITE_SECONDS.labels(table).observe(seconds)
    if ok:
        SINK_ROWS.labels(table).inc(rows)
    else:
        SINK_ERRORS.labels(table).inc()


def _json_rows(
    build: Callable[[Any, str, str, int, int], list[Any]],
) -> RowBuilder:
    """A row builder for a topic of JSON records (validated touchpoints, journey outputs)."""

    def row(event: EventT[Any], topic_id: str) -> list[Any]:
        message = event.message
        return build(
            orjson.loads(message.value or b"null"),
            message.topic,
            topic_id,
            message.partition,
            message.offset,
        )

    return row


_touchpoint_row = _json_rows(touchpoint_row)
_output_row = _json_rows(output_row)


def _headers(message: Any) -> dict[str, str]:
    raw_headers: Any = message.headers or []
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    return {
        str(name): value.decode("utf-8", errors="replace")
        if isinstance(value, bytes)
        else str(value)
        for name, value in pairs
    }


def _failed_event_row(event: EventT[Any], topic_id: str) -> list[Any]:
    message = event.message
    raw = message.value if isinstance(message.value, bytes) else b""
    return failed_event_row(
        _headers(message), raw, message.topic, topic_id, message.partition, message.offset
    )


def _journey_error_row(event: EventT[Any], topic_id: str) -> list[Any]:
    message = event.message
    key = message.key if isinstance(message.key, bytes) else None
    raw = message.value if isinstance(message.value, bytes) else b""
    return journey_error_row(
        _headers(message), key, raw, message.topic, topic_id, message.partition, message.offset
    )


def partition_batches(
    events: Sequence[EventT[Any]], build: RowBuilder, topic_ids: dict[str, str]
) -> list[PartitionBatch]:
    grouped: dict[tuple[str, int], tuple[list[int], list[list[Any]]]] = defaultdict(
        lambda: ([], [])
    )
    for event in events:
        message = event.message
        if message.headers and CONTROL_HEADER in _headers(message):
            # a control record of touchpoints.by_person (advance, erase): for the workers,
            # not a touchpoint (taken for one, its missing fields crashed the agent)
            continue
        offsets, rows = grouped[(message.topic, message.partition)]
        offsets.append(message.offset)
        rows.append(build(event, topic_ids.get(message.topic, "")))
    return [
        PartitionBatch(topic, topic_ids.get(topic, ""), partition, offsets, rows)
        for (topic, partition), (offsets, rows) in grouped.items()
    ]


class LiveSegmentError(ValueError):
    """``?segment=`` names no segment of the journeys file; the message names the field."""


class SinkRole:
    """Owns the ClickHouse client of this process and the sink agents."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        readiness: Readiness,
        topic_ids: dict[str, str],
        access: WebAccess,
    ) -> None:
        self.app = app
        self.access = access  # its guard is the app's middleware (streams/app.py)
        self.topic_ids = topic_ids
        self.settings = settings
        self.readiness = readiness
        readiness.checks["clickhouse_migrated"] = False
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="ch-write")
        self._read_pool = ThreadPoolExecutor(2, thread_name_prefix="ch-read")
        self.client = connect(settings.clickhouse_dsn)
        catalog = self.catalog = load_catalog(settings.journeys_file)
        self._shapes = [
            JourneyShape(j.name, tuple(s.name for s in j.stages)) for j in catalog.journeys
        ]
        self.live = self._new_feed(None)
        # one more per segment asked for (?segment=): at most the journeys file's 20 and other
        self._segment_feeds: dict[str, LiveFeed] = {}
        self.writer = ClickHouseWriter(
            self.client,
            settings.clickhouse_database,
            on_result=_record_write,
            distributed=settings.clickhouse_cluster is not None,
            cluster=settings.clickhouse_cluster,
        )

    def _new_feed(self, segment: str | None) -> LiveFeed:
        settings = self.settings
        segments = list(self.catalog.segment_rules.names)  # (the page's segment choice)
        return LiveFeed(
            lambda: (
                live_snapshot(
                    self.client,
                    settings.clickhouse_database,
                    self._shapes,
                    settings.live_window_minutes,
                    settings.live_baseline_minutes,
                    segment,
                    segments,
                )
                | {"segments": segments}
            ),
            self._read_pool,
            settings.live_refresh_s,
            settings.alertmanager_url,
            settings.grafana_url,
            alertmanager_auth=lambda: alertmanager_credentials(settings),
            segment=segment,
        )

    def live_feed(self, segment: str | None) -> LiveFeed:
        """The live figures of ``segment`` (None: every journey); ``LiveSegmentError`` for a
        segment the journeys file does not name."""
        if not segment:
            return self.live
        feed = self._segment_feeds.get(segment)
        if feed is None:
            labels = self.catalog.segment_rules.labels()
            if segment not in labels:
                raise LiveSegmentError(f"segment: {segment!r} is not one of {', '.join(labels)}")
            feed = self._segment_feeds[segment] = self._new_feed(segment)
            feed.run_status = self.live.run_status
        return feed

    def migrate(self) -> None:
        apply_migrations(
            self.client,
            self.settings.clickhouse_database,
            self.settings.touchpoint_retention_days,
            self.settings.clickhouse_cluster,
            retention=self.settings.retention_days(),
        )
        self.readiness.checks["clickhouse_migrated"] = True

    def register(self) -> None:
        settings = self.settings
        self._register_run_status()
        tables = ("touchpoints", "failed_events", "journey_events", "experience_moments")
        for table in (*tables, "journey_errors"):
            # every series from the start, at 0: rate() and the SinkFailing alert see them
            SINK_ROWS.labels(table)
            SINK_ERRORS.labels(table)
            SINK_DUPLICATES_SKIPPED.labels(table)
        self._sink_agent(
            settings.topic(BY_PERSON), "touchpoints", TOUCHPOINT_COLUMNS, _touchpoint_row
        )
        self._sink_agent(
            settings.topic(DLQ), "failed_events", FAILED_EVENT_COLUMNS, _failed_event_row
        )
        self._sink_agent(
            settings.topic(JOURNEYS_DLQ),
            "journey_errors",
            JOURNEY_ERROR_COLUMNS,
            _journey_error_row,
        )
        self._sink_agent(
            settings.topic(JOURNEY_EVENTS), "journey_events", OUTPUT_COLUMNS, _output_row
        )
        self._sink_agent(
            settings.topic(EXPERIENCE_MOMENTS), "experience_moments", OUTPUT_COLUMNS, _output_row
        )

        @self.app.on_partitions_revoked.connect
        async def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.writer.forget_positions()

        @self.app.on_before_shutdown.connect
        async def _stopping(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            for feed in (self.live, *self._segment_feeds.values()):
                feed.close()  # (before the web server stops: it waits for open streams)

        @self.app.page("/api/v1/stats")
        async def stats(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(
                self._read_pool, pipeline_stats, self.client, settings.clickhouse_database
            )
            return view.json(body)

        @self.app.page("/api/v1/live")
        async def live(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            try:
                feed = self.live_feed(cast("Any", request).query.get("segment"))
            except LiveSegmentError as exc:
                return view.json({"error": str(exc)}, status=400)
            return view.bytes(await feed.current(), content_type="application/json")

        @self.app.page("/api/v1/live/stream")
        async def live_stream(view: faust.web.View, request: faust.web.Request) -> Any:
            raw = cast("Any", request)
            try:
                feed = self.live_feed(raw.query.get("segment"))
            except LiveSegmentError as exc:
                return view.json({"error": str(exc)}, status=400)
            return await feed.stream(raw, allowed=lambda: self.access.still_allowed(raw))

        async def live_refresh() -> None:
            for feed in (self.live, *self._segment_feeds.values()):
                await feed.tick()  # (only those someone watches recompute)

        self.app.timer(settings.live_refresh_s)(live_refresh)

        @self.app.page("/")
        async def live_page(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            return view.html(_LIVE_PAGE)

        async def script(view: faust.web.View, request: faust.web.Request, name: str) -> Any:
            if name not in _SCRIPTS:
                return view.json({"error": f"no script {name!r}"}, status=404)
            return view.bytes(_SCRIPTS[name], content_type="text/javascript")

        self.app.page("/static/{name}")(script)
        register_signin(self.app, self.access)

        self._register_map_pages()
        self._register_customers()
        self._register_lookup()
        self._register_sql()
        self._register_erase()

    def _register_run_status(self) -> None:
        """Started by `journeywatch run`: what its supervisor reports in the run-status file
        (restarts of each process) goes to /metrics and the live page. A file another run
        wrote (not this process's parent) is ignored."""
        path = self.settings.data_dir / RUN_STATUS_FILE
        run_pid = os.getppid()
        RUN_RESTARTS.read = lambda: restarts_by_process(read_status(path, run_pid))
        self.live.run_status = lambda: live_summary(read_status(path, run_pid))

    def _register_customers(self) -> None:
        """The customer timeline: ``GET /api/v1/customers/{identifier}`` (any identifier; a raw
        e-mail or phone hashed with the PII key, never stored or logged) and the page
        ``/customers/<identifier>`` (docs/customer-timeline.md). Any signed-in role may read."""
        from sinks.clickhouse.customers import TimelineError, read_timeline
        from streams.customers import identifier_key
        from streams.runtime import ensure_pii_key

        role = self
        settings = ensure_pii_key(self.settings)  # (an embedded run's key, under data_dir)
        database = settings.clickhouse_database
        page = _load_page("customer.html")

        async def customer_page(view: faust.web.View, request: faust.web.Request, **_: Any) -> Any:
            return view.html(page)

        self.app.page("/customers")(customer_page)
        self.app.page("/customers/{identifier}")(customer_page)

        async def customer_api(
            view: faust.web.View, request: faust.web.Request, identifier: str
        ) -> Any:
            try:
                key = identifier_key(settings, identifier)
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(
                    role._read_pool, read_timeline, role.client, database, key
                )
            except TimelineError as exc:
                return view.json({"error": str(exc)}, status=exc.status)
            response = view.bytes(orjson.dumps(body), content_type="application/json")
            response.headers["Cache-Control"] = "no-store"
            return response

        self.app.page("/api/v1/customers/{identifier}")(customer_api)

        from streams.openapi import sink_openapi_document

        description = orjson.dumps(sink_openapi_document())

        async def openapi(view: faust.web.View, request: faust.web.Request) -> Any:
            return view.bytes(description, content_type="application/json")

        self.app.page("/api/v1/openapi.json")(openapi)

    def _register_lookup(self) -> None:
        """``POST /api/v1/touchpoints/stored`` ``{"event_ids": [...]}`` → the ones ClickHouse
        holds: how ``journeywatch replay raw --api`` asks while this process owns chdb. A
        lookup changes nothing: the read-only role may ask (an endpoint that changes or erases
        data is wrapped in ``webauth.requires("admin")``)."""
        role = self
        database = self.settings.clickhouse_database
        body_timeout_s = self.settings.collector_body_timeout_s
        max_body = 2 * 1024 * 1024  # 10,000 ids of up to ~200 bytes

        class StoredTouchpoints(faust.web.View):
            async def post(self, request: faust.web.Request) -> faust.web.Response:
                raw = await bounded_body(self, request, max_body, body_timeout_s)
                if not isinstance(raw, bytes):
                    return raw  # (the error answer)
                try:
                    body = orjson.loads(raw)
                    ids = body["event_ids"]
                    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                        raise TypeError
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return self.json(
                        {"error": 'event_ids: send {"event_ids": ["...", ...]}'}, status=400
                    )
                if len(ids) > 10_000:
                    return self.json({"error": "event_ids: at most 10,000 at a time"}, status=400)
                loop = asyncio.get_running_loop()
                stored = await loop.run_in_executor(
                    role._read_pool, stored_event_ids, role.client, database, ids
                )
                return self.json({"stored": sorted(stored)})

        self.app.page("/api/v1/touchpoints/stored")(StoredTouchpoints)

    def _register_sql(self) -> None:
        """``POST /api/v1/sql`` ``{"query": "SELECT ..."}`` (or the query as ``text/plain``):
        an analyst's query, read-only and bounded (sinks/clickhouse/sql.py), on a client of
        its own, one query at a time in a thread of its own (a slow query holds neither the
        live page nor the maps). Any signed-in role may ask: it reads, like the maps."""
        from sinks.clickhouse.sql import SqlError, SqlLimits, read_only_client, run_sql

        limits = SqlLimits.of(self.settings)
        client = read_only_client(
            self.settings.clickhouse_dsn, self.settings.clickhouse_database, limits
        )
        pool = ThreadPoolExecutor(1, thread_name_prefix="ch-sql")
        body_timeout_s = self.settings.collector_body_timeout_s
        max_body = limits.max_query_bytes + 4096  # the query, JSON-quoted, and its envelope

        class Sql(faust.web.View):
            async def post(self, request: faust.web.Request) -> faust.web.Response:
                raw = await bounded_body(self, request, max_body, body_timeout_s)
                if not isinstance(raw, bytes):
                    return raw  # (the error answer)
                if cast("Any", request).content_type == "text/plain":
                    text = raw.decode("utf-8", errors="replace")
                else:
                    try:
                        text = orjson.loads(raw)["query"]
                        if not isinstance(text, str):
                            raise TypeError
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        return self.json(
                            {"error": 'send {"query": "SELECT ..."} (or the query as text/plain)'},
                            status=400,
                        )
                loop = asyncio.get_running_loop()
                try:
                    answer = await loop.run_in_executor(pool, run_sql, client, text, limits)
                except SqlError as exc:
                    return self.json(exc.body(), status=exc.status)
                response = self.bytes(orjson.dumps(answer), content_type="application/json")
                response.headers["Cache-Control"] = "no-store"
                return response

        self.app.page("/api/v1/sql")(Sql)

    def _register_erase(self) -> None:
        """``POST /api/v1/customers/{customer}/erase``: erase one customer everywhere
        (streams/erasure.py, docs/operations/erasure.md); the audit record, no personal data.
        Admin only (``requires("admin")``: 403 for the read-only role; 401 without sign-in)."""
        from sinks.clickhouse.erasure import ErasureError
        from streams.erasure import erase, requested_keys
        from streams.runtime import ensure_pii_key
        from streams.webauth import principal_of, requires

        role = self
        settings = ensure_pii_key(self.settings)  # (an embedded run's key, under data_dir)
        pool = ThreadPoolExecutor(1, thread_name_prefix="ch-erase")  # one erasure at a time

        class Erase(faust.web.View):
            @requires("admin")
            async def post(self, request: faust.web.Request, customer: str) -> faust.web.Response:
                principal = principal_of(request)
                who = f"api {principal.role} ({principal.via})" if principal else "api"

                def run() -> dict[str, object]:
                    keys = requested_keys(settings, customer, [])
                    return erase(settings, role.client, keys, who).as_dict()

                try:
                    record = await asyncio.get_running_loop().run_in_executor(pool, run)
                except ErasureError as exc:
                    return self.json({"error": str(exc)}, status=400)
                return self.json(record)

        self.app.page("/api/v1/customers/{customer}/erase")(Erase)

    def _register_map_pages(self) -> None:
        """The live journey map (/map/<journey>) and its API (/api/v1/map/<journey>)."""
        catalog = self.catalog
        journeys = html.escape(  # an attribute's value: read by map.js, never run
            orjson.dumps(
                [{"name": j.name, "description": j.description} for j in catalog.journeys]
            ).decode()
        )
        # the journeys file's segments (docs/segments.md), names checked by the file's loader
        named = catalog.segment_rules.names
        segment_options = "".join(
            f'<option value="{name}">{html.escape(name.replace("_", " "))}</option>'
            for name in (*named, "other")
            if named
        )
        page = (
            _load_page("map.html")
            .replace("__JOURNEYS__", journeys)
            .replace("__MAP_CSS__", MAP_CSS)
            .replace("__SEGMENT_OPTIONS__", segment_options)
        )
        database = self.settings.clickhouse_database

        async def map_page(view: faust.web.View, request: faust.web.Request, **_: Any) -> Any:
            return view.html(page)

        self.app.page("/map")(map_page)
        self.app.page("/map/{journey}")(map_page)

        async def runbook(view: faust.web.View, request: faust.web.Request, name: str) -> Any:
            status, body, location = runbook_answer(name)
            if location:
                return view.html("", status=status, headers={"Location": location})
            return view.html(body, status=status)

        self.app.page("/runbooks/{name}")(runbook)

        async def font(view: faust.web.View, request: faust.web.Request, name: str) -> Any:
            if name not in FONT_FILES.values():
                return view.json({"error": f"no font {name!r}"}, status=404)
            data = font_path(name).read_bytes()
            return view.bytes(data, content_type="font/ttf")

        self.app.page("/map/fonts/{name}")(font)

        async def map_api(view: faust.web.View, request: faust.web.Request, journey: str) -> Any:
            query = cast("Any", request).query
            fmt = query.get("format", "json")
            if fmt not in ("json", "html", "svg", "png"):
                return view.json({"error": "format: one of json, html, svg, png"}, status=400)
            map_request = MapRequest(
                journey=journey,
                since=query.get("since") or "24h",
                until=query.get("until") or "now",
                compare_since=query.get("compare_since") or None,
                compare_until=query.get("compare_until") or None,
                channel=query.get("channel") or None,
                segment=query.get("segment") or None,
            )
            loop = asyncio.get_running_loop()
            try:
                body = await loop.run_in_executor(
                    self._read_pool, answer_map, self.client, database, catalog, map_request
                )
            except MapRequestError as exc:
                return view.json({"error": str(exc)}, status=400)
            if fmt == "json":
                return view.json(body)
            after, before = maps_of(body)
            if fmt == "html" and query.get("download") != "1":
                return view.html(render_fragment(after, before))
            suffix = f".{fmt}"
            data = await loop.run_in_executor(self._read_pool, map_bytes, after, before, suffix)
            content_type = {
                ".html": "text/html",
                ".svg": "image/svg+xml",
                ".png": "image/png",
            }[suffix]
            response = view.bytes(data, content_type=content_type)
            response.headers["Content-Disposition"] = (
                f'attachment; filename="journey-map-{journey}{suffix}"'
            )
            return response

        self.app.page("/api/v1/map/{journey}")(map_api)

    def _sink_agent(
        self, topic_name: str, table: str, columns: Sequence[str], build: RowBuilder
    ) -> None:
        topic = self.app.topic(topic_name, key_serializer="raw", value_serializer="raw")
        settings = self.settings

        async def sink(stream: StreamT[Any]) -> None:
            async for events in cast("Stream[bytes]", stream).take_events(
                settings.sink_batch_size, within=settings.sink_batch_seconds
            ):
                for batch in partition_batches(events, build, self.topic_ids):
                    await self._write_until_done(table, columns, batch)

        self.app.agent(topic, name=f"sink-{table}")(sink)

    async def _write_until_done(
        self, table: str, columns: Sequence[str], batch: PartitionBatch
    ) -> None:
        loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            try:
                written = await loop.run_in_executor(
                    self._write_pool, self.writer.write, table, columns, batch
                )
                if written < len(batch.rows):
                    SINK_DUPLICATES_SKIPPED.labels(table).inc(len(batch.rows) - written)
                return
            except Exception as exc:
                log.error(
                    "clickhouse write failed; holding the batch and retrying",
                    extra={
                        "table": table,
                        "partition": batch.partition,
                        "error": str(exc),
                        "retry_in_s": delay,
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


async def bounded_body(
    view: faust.web.View, request: faust.web.Request, max_body: int, timeout_s: float
) -> bytes | faust.web.Response:
    """A request's whole body, bounded in size and time (streams/httpbody.py), or the error
    answer to give: 415 for a compressed body, 408 or 413 (the connection then closed)."""
    from streams.httpbody import BodyRejected, read_body

    try:
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise BodyRejected(415, "send the body without Content-Encoding")
        return await read_body(cast("Any", request), max_body, timeout_s)
    except BodyRejected as exc:
        response = view.json({"error": exc.message}, status=exc.status)
        if exc.status in (408, 413):
            cast("Any", response).force_close()
        return response


def _load_page(name: str) -> str:
    return resources.files("streams").joinpath(f"static/{name}").read_text(encoding="utf-8")


_LIVE_PAGE = _load_page("live.html")
# the pages' scripts (a content security policy without inline script: streams/webauth.py)
_SCRIPTS = {name: _load_page(name).encode() for name in ("live.js", "map.js", "customer.js")}
