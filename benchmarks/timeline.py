"""The customer timeline (docs/customer-timeline.md): one customer's timeline read from 10 million
touchpoints of 1 million persons on embedded ClickHouse (chdb), target under 100 ms."""

from __future__ import annotations

import random
import statistics
import tempfile
import time

from sinks.clickhouse.client import connect
from sinks.clickhouse.customers import read_timeline
from sinks.clickhouse.migrations import apply_migrations

TOUCHPOINTS = 10_000_000
PERSONS = 1_000_000
OUTPUTS = 5_000_000
READS = 50


def _fill(client: object, db: str) -> float:
    """10M touchpoints (a customer id and a device id each; one in four persons' first touches
    anonymous, merged at login), the engine's links and merges, 5M outputs; the seconds the
    inserts took (the materialized views of migration 0012 fill the copies as they go)."""
    command = client.command  # type: ignore[attr-defined]
    at = "toDateTime64('2026-10-01 00:00:00', 3, 'UTC') + intDiv(number, 4)"
    person = f"number % {PERSONS}"
    started = time.perf_counter()
    command(
        f"INSERT INTO {db}.touchpoints (event_id, occurred_at, received_at, channel, touchpoint, "
        "action, customer_id, device_id, anonymous_id) "
        f"SELECT concat('t-', toString(number)), {at}, {at}, "
        "['web', 'app', 'call_center', 'store'][number % 4 + 1], 'home.view', 'view', "
        f"if(number < {PERSONS} AND {person} % 4 = 0, '', concat('cust-', toString({person}))), "
        f"concat('dev-', toString({person})), "
        f"if({person} % 4 = 0, concat('anon-', toString({person})), '') "
        f"FROM numbers({TOUCHPOINTS})"
    )
    identity = (
        f"INSERT INTO {db}.journey_events (output_id, type, name, at, person_id, event_id, detail) "
    )
    command(
        identity + f"SELECT concat('l-', toString(number)), 'identity', 'linked', {at}, "
        f"concat('c:cust-', toString({person})), concat('t-', toString(number)), "
        f"concat('{{\"identifier\":\"device_id:dev-', toString({person}), '\"}}') "
        f"FROM numbers({PERSONS})"
    )
    command(
        identity + f"SELECT concat('a-', toString(number)), 'identity', 'linked', {at}, "
        "concat('a:anonymous_id:anon-', toString(number * 4)), concat('t-', toString(number * 4)), "
        f"concat('{{\"identifier\":\"anonymous_id:anon-', toString(number * 4), '\"}}') "
        f"FROM numbers({PERSONS // 4})"
    )
    command(
        identity + f"SELECT concat('m-', toString(number)), 'identity', 'merged', {at}, "
        f"concat('c:cust-', toString(number * 4)), concat('t-', toString(number * 4)), "
        f"concat('{{\"from_person\":\"a:anonymous_id:anon-', toString(number * 4), '\"}}') "
        f"FROM numbers({PERSONS // 4})"
    )
    command(
        f"INSERT INTO {db}.experience_moments (output_id, type, name, at, person_id, journey, "
        "journey_id, stage, event_id, detail) "
        f"SELECT concat('o-', toString(number)), 'negative_moment', 'error', {at}, "
        f"concat('c:cust-', toString({person})), 'online_purchase', "
        f"concat('j-', toString({person})), 'payment', concat('t-', toString(number)), '{{}}' "
        f"FROM numbers({OUTPUTS})"
    )
    seconds = time.perf_counter() - started
    for table in ("touchpoints_by_identifier", "person_outputs", "identity_links"):
        command(f"OPTIMIZE TABLE {db}.{table} FINAL")
    return seconds


def run() -> str:
    client = connect(f"chdb://{tempfile.mkdtemp(prefix='jw-bench-timeline-')}")
    db = "bench_timeline"
    apply_migrations(client, db, retention_days=3650)
    fill_s = _fill(client, db)
    copies = client.query(
        f"SELECT (SELECT count() FROM {db}.touchpoints_by_identifier), "
        f"(SELECT count() FROM {db}.person_outputs), (SELECT count() FROM {db}.identity_links)"
    ).result_rows[0]
    rng = random.Random(7)
    by_kind: dict[str, list[float]] = {"customer id": [], "anonymous id (merged)": []}
    touches = 0
    for _ in range(READS):
        n = rng.randrange(PERSONS // 4) * 4  # a person with an anonymous start
        for kind, key in (
            ("customer id", f"customer_id:cust-{n}"),
            ("anonymous id (merged)", f"anonymous_id:anon-{n}"),
        ):
            started = time.perf_counter()
            timeline = read_timeline(client, db, key)
            by_kind[kind].append((time.perf_counter() - started) * 1000)
            touches = max(touches, len(timeline["touchpoints"]))
            assert timeline["person_id"] == f"c:cust-{n}", timeline["person_id"]
    rows = [
        f"| by {kind} | {statistics.median(ms):.1f} | "
        f"{statistics.quantiles(ms, n=20, method='inclusive')[-1]:.1f} | {max(ms):.1f} |"
        for kind, ms in by_kind.items()
    ]
    return (
        "## Customer timeline: one customer among 10 million touchpoints\n\n"
        "Command: `make bench SUITES=timeline` (suite `benchmarks/timeline.py`), embedded "
        "ClickHouse (chdb), one process. Target: under 100 ms.\n\n"
        f"{TOUCHPOINTS:,} touchpoints of {PERSONS:,} persons (10 each, 4 channels; a quarter "
        "of them start anonymous and are merged at login), their links and merges and "
        f"{OUTPUTS:,} outputs, inserted in {fill_s:.0f} s with migration 0012's views filling "
        f"the copies: {copies[0]:,} rows in `touchpoints_by_identifier`, {copies[1]:,} in "
        f"`person_outputs`, {copies[2]:,} in `identity_links`. `read_timeline` "
        f"({READS} random customers each way, up to {touches} touchpoints each; the whole "
        "read: person, merges, outputs, blocked identifiers, touchpoints, assembly):\n\n"
        "| named | median ms | p95 ms | max ms |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
