"""The ``journeywatch`` command."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from pipeline.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  JW_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors(include_url=False)
        ]
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="journeywatch")
def main() -> None:
    """journeywatch: real-time customer-experience monitor.

    Settings come from JW_* environment variables (see docs/settings.md).
    """


@main.command()
def run() -> None:
    """Start the whole product on this machine (embedded broker and ClickHouse by default)."""
    from streams.logs import setup_logging
    from streams.runtime import run as run_runtime

    settings = _settings()
    setup_logging(settings.log_level)
    sys.exit(run_runtime(settings))


@main.command()
@click.option("--index", default=0, show_default=True, help="Worker number (sets its web port).")
def worker(index: int) -> None:
    """Run one Faust worker with the processing agents (needs JW_BROKER_URL)."""
    from pipeline.definitions import DefinitionError, load_catalog
    from streams.roles import run_worker

    settings = _settings()
    if settings.broker_url is None:
        raise click.ClickException("JW_BROKER_URL is not set: a worker needs a Kafka broker")
    try:  # fail at start-up, not at the first event
        load_catalog(settings.journeys_file)
    except DefinitionError as exc:
        raise click.ClickException(str(exc)) from exc
    run_worker(settings, index)


@main.command()
def sink() -> None:
    """Run the ClickHouse sink (owns ClickHouse; serves the status page and the API)."""
    from streams.roles import run_sink

    settings = _settings()
    if settings.broker_url is None:
        raise click.ClickException("JW_BROKER_URL is not set: the sink needs a Kafka broker")
    run_sink(_signed_in_settings(settings))


def _signed_in_settings(settings: Settings) -> Settings:
    """The sink's settings with its sign-in checked: a refusal says what to set; on loopback
    without a token, one is generated (its file named, never its value)."""
    from streams.webauth import generated_token_path, startup_problem, with_generated_token

    problem = startup_problem(settings)
    if problem:
        raise click.ClickException(problem)
    signed = with_generated_token(settings)
    if signed is not settings:
        click.echo(
            f"journeywatch sink: sign in at http://{settings.web_host}:{settings.status_port}"
            f"/signin with the admin token in {generated_token_path(settings)} "
            "(JW_WEB_ADMIN_TOKEN was not set)",
            err=True,
        )
    return signed


@main.command()
def collector() -> None:
    """Run the HTTP collector (POST /v1/events) on JW_COLLECTOR_PORT."""
    from streams.collector import run_collector
    from streams.logs import setup_logging

    settings = _settings()
    if settings.broker_url is None:
        raise click.ClickException("JW_BROKER_URL is not set: the collector needs a Kafka broker")
    if settings.pii_hash_key is None:
        raise click.ClickException(
            "JW_PII_HASH_KEY is not set: the collector hashes e-mail and phone with it"
        )
    if not settings.collector_api_keys:
        raise click.ClickException(
            'JW_COLLECTOR_API_KEYS is empty: e.g. {"web-sdk": {"key": "<32 random chars>"}}'
        )
    setup_logging(settings.log_level)
    run_collector(settings)


@main.command("import")
@click.option(
    "--kind",
    type=click.Choice(["contact-center", "store", "touchpoints", "amazon-connect"]),
    help="Which export the files are (touchpoints: JSON Lines in the event contract, as the "
    "collector takes them; amazon-connect: contact records as Firehose writes them).",
)
@click.option(
    "--mapping",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Any other export: a YAML import mapping naming its columns and what its events "
    "become (docs/feeds.md, 'Any other export'), instead of --kind.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Default: from the file name (.jsonl/.ndjson/.json: JSON Lines; else CSV).",
)
@click.option("--dry-run", is_flag=True, help="Check the files; produce nothing.")
@click.option("--errors-out", type=click.Path(path_type=Path), help="Write the error report here.")
@click.option(
    "--end-of-backfill",
    is_flag=True,
    help="The last import of a backfill: once the workers have ingested it, move their event "
    "time to now, so that journeys still waiting on a time-out resolve at once "
    "(docs/feeds.md, 'Backfills').",
)
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def import_(
    kind: str | None,
    mapping: Path | None,
    fmt: str | None,
    dry_run: bool,
    errors_out: Path | None,
    end_of_backfill: bool,
    files: tuple[Path, ...],
) -> None:
    """Import contact-centre or store exports (CSV or JSON Lines), any other export with a
    mapping file, or touchpoints in the event contract (JSON Lines), into touchpoints.raw."""
    from pipeline.definitions import DefinitionError
    from pipeline.importmap import ImportMapping, load_mapping
    from streams.importer import end_backfill, import_file

    if (kind is None) == (mapping is None):
        raise click.UsageError("give --kind or --mapping (one of them)")
    import_mapping: ImportMapping | None = None
    if mapping is not None:
        try:
            import_mapping = load_mapping(mapping)
        except DefinitionError as exc:
            raise click.ClickException(str(exc)) from None
    settings = _settings()
    if settings.broker_url is None and not dry_run:
        raise click.ClickException("JW_BROKER_URL is not set (or use --dry-run)")
    reports = [
        import_file(
            path, kind or "mapping", settings, fmt=fmt, dry_run=dry_run, mapping=import_mapping
        )
        for path in files
    ]
    errors = [line for report in reports for line in report.errors]
    for line in errors[:50]:
        click.echo(line, err=True)
    if len(errors) > 50:
        click.echo(f"... and {len(errors) - 50} more", err=True)
    if errors_out:
        errors_out.write_text("".join(line + "\n" for line in errors))
    imported = sum(r.imported for r in reports)
    verb = "valid" if dry_run else "imported"
    click.echo(f"{imported} events {verb}, {len(errors)} lines rejected")
    if end_of_backfill and not dry_run:
        offsets: dict[int, int] = {}
        for report in reports:
            for partition, offset in report.offsets.items():
                offsets[partition] = max(offset, offsets.get(partition, -1))
        at = end_backfill(settings, offsets)
        when = datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="seconds")
        click.echo(f"end of backfill: the workers' event time moves to {when}")
    if imported == 0 and errors:
        sys.exit(1)


@main.command()
def migrate() -> None:
    """Apply the ClickHouse migrations to JW_CLICKHOUSE_DSN (idempotent)."""
    from sinks.clickhouse.client import connect, redact_dsn
    from sinks.clickhouse.migrations import apply_migrations

    settings = _settings()
    client = connect(settings.clickhouse_dsn)
    applied = apply_migrations(
        client,
        settings.clickhouse_database,
        settings.touchpoint_retention_days,
        settings.clickhouse_cluster,
        retention=settings.retention_days(),
    )
    target = f"{redact_dsn(settings.clickhouse_dsn)} ({settings.clickhouse_database})"
    if applied:
        for migration in applied:
            click.echo(f"applied {migration.version:04d}_{migration.name}")
    click.echo(f"{target} is up to date")


@main.command("map")
@click.option("--journey", required=True, help="The journey to draw (a name in the journeys file).")
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="Start of the period: an ISO date or time (UTC), or a duration before the newest "
    "touchpoint (24h, 7d).",
)
@click.option("--until", default="now", show_default=True, help="End of the period.")
@click.option(
    "--compare",
    metavar="SINCE..UNTIL",
    help="A period to compare with, e.g. 14d..7d or 2026-11-01..2026-11-08 (the before).",
)
@click.option("--channel", help="Only journeys that used this channel.")
@click.option(
    "--segment",
    help="Only journeys of this segment: identified, anonymous, a segment the journeys file "
    "names (docs/segments.md) or other (in none of them).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The file to write: .html (self-contained), .svg or .png.",
)
@click.option(
    "--api",
    metavar="URL",
    help="Read through a running sink (e.g. http://127.0.0.1:8080) instead of opening "
    "ClickHouse: needed while the sink owns the embedded chdb directory.",
)
def map_(
    journey: str,
    since: str,
    until: str,
    compare: str | None,
    channel: str | None,
    segment: str | None,
    out: Path,
    api: str | None,
) -> None:
    """Draw the customer journey map of JOURNEY from ClickHouse (docs/journey-map.md)."""
    from sinks.clickhouse.journey_map import MapRequest, MapRequestError, maps_of
    from streams.mapexport import FORMATS, map_bytes

    if out.suffix not in FORMATS:
        raise click.BadParameter(f"must end in {', '.join(FORMATS)}", param_hint="--out")
    compare_since = compare_until = None
    if compare:
        if ".." not in compare:
            raise click.BadParameter("write SINCE..UNTIL, e.g. 14d..7d", param_hint="--compare")
        compare_since, compare_until = compare.split("..", 1)
    request = MapRequest(journey, since, until, compare_since, compare_until, channel, segment)
    try:
        body = _map_from_api(api, request) if api else _map_from_clickhouse(request)
    except MapRequestError as exc:
        raise click.ClickException(str(exc)) from exc
    after, before = maps_of(body)
    out.write_bytes(map_bytes(after, before, out.suffix))
    compared = f", compared with {before.since} to {before.until}" if before else ""
    click.echo(
        f"wrote {out} ({after.journey}: {after.started:,} journeys started {after.since} to "
        f"{after.until}{compared})"
    )


def _map_from_clickhouse(request: Any) -> dict[str, Any]:
    from pipeline.definitions import load_catalog
    from sinks.clickhouse.client import ClickHouseUnavailable, connect
    from sinks.clickhouse.journey_map import answer_map

    settings = _settings()
    try:
        client = connect(settings.clickhouse_dsn)
    except ClickHouseUnavailable as exc:
        raise click.ClickException(
            f"{exc} While journeywatch runs, read through it: --api http://127.0.0.1:"
            f"{settings.status_port}"
        ) from exc
    return answer_map(
        client, settings.clickhouse_database, load_catalog(settings.journeys_file), request
    )


def _map_from_api(api: str, request: Any) -> dict[str, Any]:
    import urllib.error
    import urllib.parse
    import urllib.request

    from sinks.clickhouse.journey_map import MapRequestError

    fields = {
        "since": request.since,
        "until": request.until,
        "compare_since": request.compare_since,
        "compare_until": request.compare_until,
        "channel": request.channel,
        "segment": request.segment,
    }
    query = urllib.parse.urlencode({k: v for k, v in fields.items() if v})
    url = f"{api.rstrip('/')}/api/v1/map/{urllib.parse.quote(request.journey)}?{query}"
    try:
        asked = urllib.request.Request(url, headers=_api_headers())  # noqa: S310 - user's URL
        with urllib.request.urlopen(asked, timeout=60) as response:  # noqa: S310 - user's URL
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        if exc.code == 400:
            raise MapRequestError(json.loads(exc.read())["error"]) from exc
        raise click.ClickException(f"{url}: HTTP {exc.code}{_sign_in_hint(exc.code)}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot reach journeywatch at {api}: {exc}") from exc


def _api_headers() -> dict[str, str]:
    """The sink's API wants a token: the one of these settings (or of the local run)."""
    from streams.sink_api import auth_headers

    return auth_headers(_settings())


def _sign_in_hint(status: int) -> str:
    from streams.sink_api import SIGN_IN_HINT

    return SIGN_IN_HINT if status in (401, 403) else ""


# a query may begin with a comment ("-- query: ..."): an argument, not an unknown option
@main.command("sql", context_settings={"ignore_unknown_options": True})
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: aligned columns; csv: a header line, then the rows; json: the API's answer "
    '({"columns", "rows", "row_count", "elapsed_s"}).',
)
@click.option(
    "--api",
    metavar="URL",
    help="Ask this running sink (POST URL/api/v1/sql). Default, with the embedded ClickHouse: "
    "the local run's sink, http://127.0.0.1:JW_STATUS_PORT.",
)
@click.option(
    "--direct",
    is_flag=True,
    help="Open ClickHouse (JW_CLICKHOUSE_DSN) from this process instead, with the same "
    "read-only limits: the default for a ClickHouse server; for the embedded one, only while "
    "no sink runs.",
)
def sql(query: str, fmt: str, api: str | None, direct: bool) -> None:
    """Run one read-only QUERY (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) on journeywatch's
    ClickHouse, e.g. a ready query of docs/analyst-guide.md; '-' reads it from stdin. Limits:
    JW_SQL_MAX_ROWS rows, JW_SQL_TIMEOUT_S seconds."""
    if api and direct:
        raise click.BadParameter("give --api or --direct, not both", param_hint="--direct")
    if query == "-":
        query = sys.stdin.read()
    settings = _settings()
    if direct or (api is None and not settings.embedded_clickhouse):
        answer = _sql_direct(settings, query)
    else:
        answer = _sql_via_api(api or f"http://127.0.0.1:{settings.status_port}", query, settings)
    click.echo(_sql_output(answer, fmt), nl=False)
    if fmt == "table":
        rows = answer["row_count"]
        click.echo(f"{rows:,} row{'' if rows == 1 else 's'} in {answer['elapsed_s']:g} s", err=True)


def _sql_direct(settings: Settings, query: str) -> dict[str, Any]:
    from sinks.clickhouse.client import ClickHouseUnavailable
    from sinks.clickhouse.sql import SqlError, SqlLimits, read_only_client, run_sql

    limits = SqlLimits.of(settings)
    try:
        client = read_only_client(settings.clickhouse_dsn, settings.clickhouse_database, limits)
    except ClickHouseUnavailable as exc:
        hint = (
            " While journeywatch runs, leave out --direct: the query goes through its sink "
            f"(http://127.0.0.1:{settings.status_port})."
            if settings.embedded_clickhouse
            else ""
        )
        raise click.ClickException(f"{exc}{hint}") from exc
    try:
        return run_sql(client, query, limits)
    except SqlError as exc:
        raise click.ClickException(exc.message) from exc


def _sql_via_api(api: str, query: str, settings: Settings) -> dict[str, Any]:
    from streams.sink_api import NotAnApiUrl, SinkApiError, SinkUnreachable, call_sink_api

    # the sink stops the query at its own time limit; this waits a little longer for it
    timeout_s = max(60.0, settings.sql_timeout_s + 30)
    try:
        return call_sink_api(settings, api, "/api/v1/sql", {"query": query}, timeout_s)
    except NotAnApiUrl as exc:
        raise click.BadParameter("must be an http(s) URL", param_hint="--api") from exc
    except SinkUnreachable as exc:
        raise click.ClickException(
            exc.message
            + ("" if settings.embedded_clickhouse else ", or query ClickHouse with --direct")
        ) from exc
    except SinkApiError as exc:
        message = exc.message
        if exc.status == 401:
            message = (
                f"{exc.url}: sign-in needed (HTTP 401): set JW_WEB_READ_TOKEN to the sink's "
                "read-only token (or JW_WEB_ADMIN_TOKEN); a local `journeywatch run` keeps its "
                "generated admin token in JW_DATA_DIR/web-admin.token, read by this command "
                "from the same directory"
            )
        elif exc.status == 404:
            message = f"{exc.url}: HTTP 404: is this a journeywatch sink (JW_STATUS_PORT)?"
        raise click.ClickException(message) from exc


def _sql_output(answer: dict[str, Any], fmt: str) -> str:
    """An answer of ``run_sql`` (or the API) as a table, CSV or JSON."""
    import csv
    import io

    if fmt == "json":
        return json.dumps(answer, ensure_ascii=False) + "\n"
    names = [str(column["name"]) for column in answer["columns"]]

    def text(value: Any) -> str:
        if value is None:
            return "NULL" if fmt == "table" else ""
        if isinstance(value, list | dict):
            return json.dumps(value, ensure_ascii=False)
        return str(value)

    rows = [[text(v) for v in row] for row in answer["rows"]]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        return out.getvalue()
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    numeric = [
        all(isinstance(row[i], int | float) for row in answer["rows"] if row[i] is not None)
        for i in range(len(names))
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(names), rule, *(line(r) for r in rows)]) + "\n"


@main.command("customer")
@click.argument("identifier")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: the timeline as aligned tables; json: the API's answer.",
)
@click.option(
    "--api",
    metavar="URL",
    help="Ask this running sink (GET URL/api/v1/customers/ID). Default, with the embedded "
    "ClickHouse: the local run's sink, http://127.0.0.1:JW_STATUS_PORT.",
)
@click.option(
    "--direct",
    is_flag=True,
    help="Open ClickHouse (JW_CLICKHOUSE_DSN) from this process instead: the default for a "
    "ClickHouse server; for the embedded one, only while no sink runs.",
)
def customer(identifier: str, fmt: str, api: str | None, direct: bool) -> None:
    """One customer's timeline: every touchpoint of the stitched person across channels, the
    journeys, negative moments, moments of truth, KPIs and the identity merges
    (docs/customer-timeline.md). IDENTIFIER: a customer id, kind:value (device_id:...,
    loyalty_id:..., email_hash:...), or email:/phone: raw (hashed here with the PII key as the
    collector hashes it; only the hash leaves this process)."""
    from sinks.clickhouse.customers import TimelineError
    from streams.customers import identifier_key, render_text, timeline_via_api

    if api and direct:
        raise click.BadParameter("give --api or --direct, not both", param_hint="--direct")
    settings = _settings()
    try:
        if settings.embedded_clickhouse and settings.pii_hash_key is None:
            from streams.runtime import ensure_pii_key

            settings = ensure_pii_key(settings)  # (the local run's key, under data_dir)
        key = identifier_key(settings, identifier)
        if direct or (api is None and not settings.embedded_clickhouse):
            timeline = _customer_direct(settings, key)
        else:
            url = api or f"http://127.0.0.1:{settings.status_port}"
            timeline = timeline_via_api(settings, url, key)
    except TimelineError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps(timeline, ensure_ascii=False))
    else:
        click.echo(render_text(timeline), nl=False)


def _customer_direct(settings: Settings, key: str) -> dict[str, Any]:
    from sinks.clickhouse.client import ClickHouseUnavailable, connect
    from sinks.clickhouse.customers import read_timeline

    try:
        client = connect(settings.clickhouse_dsn)
    except ClickHouseUnavailable as exc:
        raise click.ClickException(
            f"{exc} While journeywatch runs, leave out --direct: the timeline comes from its sink."
        ) from exc
    return read_timeline(client, settings.clickhouse_database, key)


@main.group()
def replay() -> None:
    """Re-process what the pipeline could not use (docs/operations/replay.md)."""


@replay.command("dlq")
@click.option("--dry-run", is_flag=True, help="Only report what would be replayed.")
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Reconsider every dead letter still in the topic, not only those since the last run.",
)
def replay_dlq(dry_run: bool, from_beginning: bool) -> None:
    """Send dead letters that pass the current event contract back through the pipeline."""
    from streams.replay import pending, replay_dead_letters

    settings = _settings()
    try:
        spans = pending(settings, from_beginning)
    except Exception as exc:  # the broker is the usual suspect
        raise click.ClickException(
            f"cannot read the dead-letter topic at {settings.broker_url}: {exc}"
        ) from exc
    total = sum(max(0, end - start) for start, end in spans.values())
    if not total:
        click.echo("nothing to replay: every dead letter was considered by an earlier run")
        return
    with click.progressbar(length=total, label="dead letters", file=sys.stderr) as bar:
        report = replay_dead_letters(
            settings,
            dry_run=dry_run,
            from_beginning=from_beginning,
            on_record=lambda: bar.update(1),
        )
    for line in report.lines(dry_run):
        click.echo(line)


@replay.command("raw")
@click.option("--since", required=True, help="Start: an ISO date or time (UTC), or 24h, 7d.")
@click.option("--until", default="now", show_default=True, help="End of the range.")
@click.option("--dry-run", is_flag=True, help="Only report what would be sent again.")
@click.option(
    "--api",
    metavar="URL",
    help="Ask a running sink (e.g. http://127.0.0.1:8080) which events ClickHouse holds, "
    "instead of opening ClickHouse: needed while the sink owns the embedded chdb directory.",
)
def replay_raw_(since: str, until: str, dry_run: bool, api: str | None) -> None:
    """Send again the raw events of a time range that never reached ClickHouse."""
    from datetime import UTC

    from pipeline.journeymap import parse_when
    from streams.replay import PipelineBehind, check_caught_up, raw_span, replay_raw

    settings = _settings()
    now = datetime.now(UTC)
    try:
        start, end = parse_when(since, now), parse_when(until, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    stored = _stored_via_api(api) if api else _stored_via_clickhouse(settings)
    try:
        check_caught_up(settings)
        total = sum(end_offset - first for first, end_offset in raw_span(settings).values())
    except PipelineBehind as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(f"cannot read {settings.broker_url}: {exc}") from exc
    with click.progressbar(length=total, label="raw records", file=sys.stderr) as bar:
        report = replay_raw(
            settings, start, end, stored, dry_run=dry_run, on_record=lambda: bar.update(1)
        )
    for line in report.lines(dry_run):
        click.echo(line)


def _stored_via_clickhouse(settings: Any) -> Any:
    from sinks.clickhouse.client import ClickHouseUnavailable, connect
    from sinks.clickhouse.queries import stored_event_ids

    try:
        client = connect(settings.clickhouse_dsn)
    except ClickHouseUnavailable as exc:
        raise click.ClickException(
            f"{exc} While journeywatch runs, ask it: --api http://127.0.0.1:{settings.status_port}"
        ) from exc
    return lambda ids: stored_event_ids(client, settings.clickhouse_database, ids)


def _stored_via_api(api: str) -> Any:
    import urllib.error
    import urllib.request

    if not api.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http(s) URL", param_hint="--api")
    headers = _api_headers()

    def stored(ids: list[str]) -> set[str]:
        request = urllib.request.Request(  # noqa: S310 - http(s), checked above
            f"{api.rstrip('/')}/api/v1/touchpoints/stored",
            data=json.dumps({"event_ids": ids}).encode(),
            headers={"Content-Type": "application/json", **headers},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - http(s)
                return set(json.loads(response.read())["stored"])
        except urllib.error.HTTPError as exc:
            raise click.ClickException(
                f"journeywatch at {api} answered HTTP {exc.code}{_sign_in_hint(exc.code)}"
            ) from exc
        except OSError as exc:
            raise click.ClickException(f"cannot ask journeywatch at {api}: {exc}") from exc

    return stored


@main.command()
@click.option("--customer", help="The customer id to erase (with every identifier stitched to it).")
@click.option(
    "--identifier",
    "identifiers",
    multiple=True,
    help="kind:value, e.g. device_id:d1, email_hash:..., or email:/phone: raw (hashed with "
    "the PII key as the collector does). Repeatable.",
)
@click.option(
    "--api",
    help="Ask the running journeywatch at this URL (it owns an embedded ClickHouse): "
    "POST /api/v1/customers/ID/erase with the admin token (--customer only).",
)
@click.option(
    "--wait-s",
    type=float,
    default=60.0,
    show_default=True,
    help="How long to wait for the workers and the sink to apply the erasure before deleting "
    "the rows (0: do not wait).",
)
def erase(
    customer: str | None, identifiers: tuple[str, ...], api: str | None, wait_s: float
) -> None:
    """Erase one customer everywhere: ClickHouse rows, the workers' state (docs/operations/
    erasure.md). Prints the audit record (no personal data)."""
    from sinks.clickhouse.erasure import ErasureError
    from streams.erasure import erase_directly, erase_via_api

    settings = _settings()
    try:
        if api:
            if not customer or identifiers:
                raise ErasureError("with --api, name the customer (--customer) only")
            record = erase_via_api(settings, api, customer)
        else:
            record = erase_directly(settings, customer, list(identifiers), wait_s=wait_s)
    except ErasureError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(record, indent=2))


@main.command()
def topics() -> None:
    """Create journeywatch's Kafka topics on JW_BROKER_URL (idempotent), the actions agent's
    too: in a cluster with ACLs only the admin may create topics (deploy/kafka-broker/acls.sh)."""
    from streams.actions import action_topics
    from streams.topics import ensure_topics

    settings = _settings()
    created = ensure_topics(settings) | ensure_topics(settings, action_topics())
    for name, topic_id in created.items():
        click.echo(f"{name}\t{settings.partitions} partitions\t{topic_id}")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file.")
def schema(out: Path | None) -> None:
    """Print the JSON Schema of the touchpoint event contract."""
    from pipeline.contract import event_json_schema

    text = json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    if out:
        out.write_text(text)
    else:
        click.echo(text, nl=False)


@main.group()
def journeys() -> None:
    """Journey definitions."""


@journeys.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
def journeys_check(file: Path | None) -> None:
    """Validate a journey definitions file (default: JW_JOURNEYS_FILE or the built-in one)."""
    from pipeline.definitions import DefinitionError, load_catalog

    path = file or _settings().journeys_file
    try:
        catalog = load_catalog(path)
    except DefinitionError as exc:
        raise click.ClickException(str(exc)) from exc
    for journey in catalog.journeys:
        stages = " → ".join(stage.name for stage in journey.stages)
        click.echo(
            f"{journey.name}: {stages} → goal ({len(journey.moments_of_truth)} moments of truth)"
        )
    for name, mapping in catalog.sources.items():
        webhook = f", webhook ({mapping.webhook.kind})" if mapping.webhook else ""
        click.echo(f"source {name}: {len(mapping.rules)} rules{webhook}")
    for segment in catalog.segments:
        click.echo(f"segment {segment.name}: {_segment_rule(segment.match)}")
        for key, allowed in segment.match.attributes.items():
            if any(isinstance(v, bool) for v in allowed):
                click.echo(
                    f"warning: segment {segment.name}: {key} compares with true/false: YAML reads"
                    " unquoted yes, no, on and off as those; quote a value meant as text ('NO')"
                )
    for line in _action_lines(catalog):
        click.echo(line)
    click.echo(f"{path or 'built-in definitions'}: version {catalog.version}, valid")


def _segment_rule(match: Any) -> str:
    """A segment's rule as ``journeys check`` prints it: ``channel in store and tier in gold,
    platinum`` (docs/segments.md)."""
    parts = [f"channel in {', '.join(c.value for c in match.channel)}"] if match.channel else []
    from pipeline.segment_rules import attribute_text

    parts += [
        f"{key} in {', '.join(str(attribute_text(v)) for v in allowed)}"
        for key, allowed in match.attributes.items()
    ]
    return " and ".join(parts)


@journeys.command("diff")
@click.argument("old", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("new", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def journeys_diff(old: Path, new: Path) -> None:
    """What a worker started with NEW does to the journeys in flight under OLD (the rules:
    docs/journey-engine.md, "Editing journeys"). Run it before deploying an edited file."""
    from pipeline.definitions import DefinitionError, load_catalog
    from pipeline.edits import changes

    try:
        before, after = load_catalog(old), load_catalog(new)
    except DefinitionError as exc:
        raise click.ClickException(str(exc)) from exc
    found = changes(before, after)
    for change in found:
        click.echo(str(change))
    if not found:
        click.echo("no change to in-flight journeys")
        return
    retiring = sum(1 for change in found if change.retires)
    click.echo(
        f"{retiring} of these end in-flight journeys retired"
        if retiring
        else "no in-flight journey ends retired"
    )


@main.group(invoke_without_command=True)
@click.option("--rate", type=float, default=100.0, show_default=True, help="Events per second.")
@click.option("--count", type=int, default=None, help="Stop after this many events.")
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the simulation. Default: a new one each time for a steady stream (event ids "
    "never repeat), 1 for --day (the same day and ground truth each time).",
)
@click.option(
    "--day",
    "day",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Simulate this whole day at once (personas, incidents, ground truth).",
)
@click.option("--personas", type=int, default=5_000, show_default=True, help="With --day.")
@click.option(
    "--incidents",
    default="none",
    show_default=True,
    help="With --day: all, none, or some of payment_outage, app_checkout_crash, "
    "call_centre_understaffed, store_stockout (comma-separated).",
)
@click.option(
    "--ground-truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --day: write the ground truth here (JSON Lines): every journey's outcome "
    "and negative moments, every identity link.",
)
@click.option(
    "--collector-url", default=None, help="With --day: send through this collector (…/v1/events)."
)
@click.option(
    "--api-key", envvar="JW_SIMULATE_API_KEY", default=None, help="The collector API key."
)
@click.option(
    "--batch-size", type=int, default=100, show_default=True, help="Events per collector request."
)
def simulate(
    rate: float,
    count: int | None,
    seed: int | None,
    day: datetime | None,
    personas: int,
    incidents: str,
    ground_truth: Path | None,
    collector_url: str | None,
    api_key: str | None,
    batch_size: int,
) -> None:
    """Produce simulated touchpoints: a steady stream, or a whole day with --day; `simulate
    incident NAME` starts an incident in the demo of `journeywatch run`."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    from streams.producer import SimulatorThread

    settings = _settings()
    if day is not None:
        from streams.day import parse_incidents, simulate_day

        if settings.broker_url is None and collector_url is None:
            raise click.ClickException("JW_BROKER_URL is not set (or give --collector-url)")
        sent = simulate_day(
            settings,
            day=day.date(),
            personas=personas,
            incidents=parse_incidents(incidents),
            seed=1 if seed is None else seed,
            ground_truth=ground_truth,
            collector_url=collector_url,
            api_key=api_key,
            batch_size=batch_size,
        )
        click.echo(f"simulated {day.date()}: {sent} events from {personas} personas")
        return
    if settings.broker_url is None:
        raise click.ClickException("JW_BROKER_URL is not set")
    thread = SimulatorThread(settings, rate, seed, limit=count)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        thread.stop()
        thread.join()
    if thread.error:
        raise click.ClickException(f"simulator stopped: {thread.error}")
    click.echo(f"produced {thread.produced} events")


@simulate.command("incident")
@click.argument(
    "name",
    type=click.Choice(
        ["payment_outage", "app_checkout_crash", "call_centre_understaffed", "store_stockout"]
    ),
)
@click.option("--seconds", default=60.0, show_default=True, help="How long it lasts.")
def simulate_incident(name: str, seconds: float) -> None:
    """Start an incident in the demo that `journeywatch run` plays on JW_DATA_DIR."""
    from streams.demo import request_incident

    settings = _settings()
    if not request_incident(settings, name, seconds):
        raise click.ClickException(
            f"no journeywatch run demo took the request on {settings.data_dir}: start "
            "`journeywatch run` (JW_RUN_DEMO on, the default) with the same JW_DATA_DIR"
        )
    click.echo(f"{name} started for {seconds:g} s: watch the live page and its Alerts")


@main.group()
def actions() -> None:
    """Closed-loop actions: the journeys file's actions: as webhooks (docs/actions.md)."""


def _actions_catalog(settings: Settings) -> Any:
    from pipeline.definitions import DefinitionError, load_catalog

    try:
        return load_catalog(settings.journeys_file)
    except DefinitionError as exc:
        raise click.ClickException(str(exc)) from exc


@actions.command("run")
def actions_run() -> None:
    """Run the actions agent (needs JW_BROKER_URL): delivers the actions of JW_JOURNEYS_FILE."""
    from pipeline.actions import MissingSecret, resolve_headers, resolve_url
    from streams.roles import run_actions

    settings = _settings()
    if settings.broker_url is None:
        raise click.ClickException("JW_BROKER_URL is not set: the actions agent needs a broker")
    secrets = {k: v.get_secret_value() for k, v in settings.action_secrets.items()}
    try:  # fail at start-up, naming the missing entry, not at the first trigger
        for action in _actions_catalog(settings).actions:
            resolve_headers(action, secrets)
            resolve_url(action, secrets)
    except MissingSecret as exc:
        raise click.ClickException(str(exc)) from exc
    run_actions(settings)


def _action_lines(catalog: Any) -> list[str]:
    """``journeys check``'s lines for the actions: each rule, then warnings for names no
    journey has (a rule that never fires)."""
    from pipeline.actions import unknown_names

    stages = {j.name: {s.name for s in j.stages} for j in catalog.journeys}
    moments = {j.name: {m.name for m in j.moments_of_truth} for j in catalog.journeys}
    lines = [f"action {a.name}: {a.when.trigger} -> webhook" for a in catalog.actions]
    return lines + [f"warning: {w}" for w in unknown_names(catalog.actions, stages, moments)]


@actions.command("list")
def actions_list() -> None:
    """The rules of JW_JOURNEYS_FILE: trigger, audience, webhook (without secrets), limit."""
    from pipeline.actions import shown_url

    for action in _actions_catalog(_settings()).actions:
        when = action.when
        audience = "identified customers" if action.for_.identified else "everyone"
        if action.for_.min_value is not None:
            audience += f" worth at least {action.for_.min_value:g} {action.for_.currency}"
        click.echo(
            f"{action.name}: when {when.trigger} {getattr(when, when.trigger)!s}, for "
            f"{audience}, POST {shown_url(action)}, at most once per customer "
            f"per {action.at_most_once_per / 1000:g} s"
        )


@actions.command("test")
@click.argument("rule")
def actions_test(rule: str) -> None:
    """Send one example delivery of RULE to its webhook and print the answer."""
    import asyncio
    import time

    from pipeline.actions import MissingSecret
    from streams.actions import send_example

    settings = _settings()
    found = {a.name: a for a in _actions_catalog(settings).actions}
    if rule not in found:
        raise click.ClickException(
            f"no action {rule!r} in {settings.journeys_file or 'the built-in definitions'} "
            f"(actions: {', '.join(found) or 'none'})"
        )
    try:
        result, output = asyncio.run(send_example(found[rule], settings, int(time.time() * 1000)))
    except MissingSecret as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"example trigger: {json.dumps(output, sort_keys=True)}")
    status = result.status if result.status is not None else "no answer"
    click.echo(f"answer after {result.attempts} tries: {status}")
    if result.answer:
        click.echo(result.answer)
    if not result.ok:
        raise click.ClickException(f"not delivered ({result.reason})")


if __name__ == "__main__":
    main()
