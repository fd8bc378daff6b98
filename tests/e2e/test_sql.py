"""Analysts' SQL while the product runs: a worker and the sink (which owns the embedded
ClickHouse) on a real broker, filled with a simulated day. Every ready query of
docs/analyst-guide.md returns rows through `journeywatch sql` and through `POST /api/v1/sql`;
writes, DDL, settings changes and second statements are refused with a reason and change
nothing; the row and time limits stop a query over numbers(1e10); the API needs sign-in and
the read-only token is enough."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from pipeline.scenario import DaySimulator, default_incidents
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import RAW, ensure_topics
from tests.e2e.stack import PARTITIONS, Topology, clock_events, day_start, person_key, produce_day
from tests.e2e.test_topology import guide_query, guide_query_names
from tests.helpers import (
    REPO,
    WEB_ADMIN_TOKEN,
    WEB_READ_TOKEN,
    free_port,
    http_get,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.e2e

TIMEOUT_S = 2  # JW_SQL_TIMEOUT_S of this sink
MAX_ROWS = 5000  # JW_SQL_MAX_ROWS of this sink


def ask(
    port: int, query: str, token: str | None = WEB_READ_TOKEN, timeout: float = 60
) -> tuple[int, Any]:
    """POST the query to the sink's /api/v1/sql: the status and the JSON body."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/sql",
        data=orjson.dumps({"query": query}),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """One worker and the sink with a simulated day (500 personas, the default incidents)
    processed and written: the stack of every test here (they only read, or are refused)."""
    tmp = tmp_path_factory.mktemp("sql")
    with EmbeddedBroker(free_port(), tmp / "broker.log") as broker:
        start = day_start()
        events = DaySimulator(31, start, 500, default_incidents(start)).generate()
        ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
        topology = Topology(broker, tmp, sql_timeout_s=TIMEOUT_S, sql_max_rows=MAX_ROWS)
        try:
            topology.start_sink()
            topology.start(0)
            wait_until(topology.balanced, 120, "the worker with every partition", 0.5)
            base = f"http://127.0.0.1:{topology.status_port}"
            wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 90, "the sink")
            produce_day(broker.url, events, speed=1e12)
            wait_until(topology.drained, 120, "every touchpoint processed", 0.5)
            producer = KafkaProducer(bootstrap_servers=broker.url)
            for event in clock_events(int(time.time() * 1000) - 60_000):
                producer.send(RAW, orjson.dumps(event), key=person_key(event))
            producer.close()

            def every_query_has_rows() -> bool:
                for name in guide_query_names():
                    status, body = ask(topology.status_port, guide_query(name))
                    if status != 200 or not body["rows"]:
                        return False
                return True

            wait_until(every_query_has_rows, 180, "rows for every analyst-guide query", 1.0)
            yield topology
        finally:
            topology.stop()


def test_every_analyst_guide_query_answers_through_journeywatch_sql_and_the_api(
    stack: Topology,
) -> None:
    names = sorted(guide_query_names())
    assert len(names) >= 12
    for name in names:
        query = guide_query(name)
        status, api = ask(stack.status_port, query)
        assert status == 200 and api["rows"], (name, status, api)
        # `journeywatch sql` of `make run`: the default is the local sink's API
        cli = run_cli(["sql", "--format", "json", query], stack.env)
        assert cli.returncode == 0, (name, cli.stderr)
        answer = json.loads(cli.stdout)
        assert answer["columns"] == api["columns"] and answer["rows"], name
        assert answer["row_count"] == len(answer["rows"]) <= MAX_ROWS
    query = guide_query("lifetime value by channel of purchase")
    _, api = ask(stack.status_port, query)
    table = run_cli(["sql", query], stack.env)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == [c["name"] for c in api["columns"]]
    assert len(lines) == 2 + len(api["rows"]) and f"{len(api['rows'])} rows in" in table.stderr
    csv = run_cli(["sql", "--format", "csv", query], stack.env)
    assert csv.stdout.splitlines()[0] == ",".join(c["name"] for c in api["columns"])
    assert len(csv.stdout.splitlines()) == 1 + len(api["rows"])
    # stdin, and an explicit --api
    api_url = f"http://127.0.0.1:{stack.status_port}"
    piped = subprocess.run(
        [sys.executable, "-m", "streams.cli", "sql", "--api", api_url, "--format", "json", "-"],
        input=query,
        env=stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(piped.stdout)["rows"] == api["rows"]


REFUSED = [
    ("INSERT INTO journeywatch.touchpoints (event_id) VALUES ('sql-test')", 403),
    ("DROP TABLE journeywatch.touchpoints", 403),
    ("ALTER TABLE journeywatch.touchpoints DELETE WHERE 1", 403),
    ("TRUNCATE TABLE journeywatch.journey_events", 403),
    ("SELECT count() FROM journeywatch.touchpoints SETTINGS readonly = 0", 403),
    ("SELECT count() FROM journeywatch.touchpoints SETTINGS max_result_rows = 0", 403),
    ("SET readonly = 0", 403),
    ("SELECT 1; DROP TABLE journeywatch.touchpoints", 400),
    ("SELECT * FROM file('/etc/passwd', LineAsString)", 403),
]


def test_writes_ddl_settings_and_second_statements_are_refused_and_change_nothing(
    stack: Topology,
) -> None:
    port = stack.status_port
    census = (
        "SELECT (SELECT count() FROM journeywatch.touchpoints) AS touchpoints, "
        "(SELECT count() FROM journeywatch.journey_events) AS journey_events, "
        "(SELECT groupArray(name) FROM (SELECT name FROM system.tables "
        "WHERE database = 'journeywatch' ORDER BY name)) AS tables"
    )
    before = ask(port, census)[1]["rows"]
    for sql, status in REFUSED:
        # the admin token changes nothing either: the SQL API is read-only for every role
        for token in (WEB_READ_TOKEN, WEB_ADMIN_TOKEN):
            got, body = ask(port, sql, token)
            assert got == status, (sql, got, body)
            if status == 403:
                assert body["reason"] == "read_only" and body["error"].startswith("read-only: ")
            else:
                assert "one statement at a time" in body["error"]
        cli = run_cli(["sql", sql], stack.env)
        assert cli.returncode == 1 and cli.stdout == "", sql
        assert "read-only: " in cli.stderr or "one statement at a time" in cli.stderr, cli.stderr
    assert ask(port, census)[1]["rows"] == before
    syntax = run_cli(["sql", "SELECT count( FROM journeywatch.touchpoints"], stack.env)
    assert syntax.returncode == 1 and "Syntax error: failed at position" in syntax.stderr


def test_the_row_and_time_limits_stop_queries_over_ten_billion_rows(stack: Topology) -> None:
    port = stack.status_port
    started = time.monotonic()
    status, body = ask(port, "SELECT number FROM numbers(1e10)")
    assert (status, body["reason"]) == (400, "too_many_rows"), body
    assert f"limit of {MAX_ROWS:,} rows (JW_SQL_MAX_ROWS)" in body["error"]
    status, body = ask(port, "SELECT sum(sipHash64(number)) FROM numbers(1e10)")
    assert (status, body["reason"]) == (400, "timeout"), body
    assert f"time limit of {TIMEOUT_S} s (JW_SQL_TIMEOUT_S)" in body["error"]
    assert time.monotonic() - started < TIMEOUT_S + 15
    cli = run_cli(["sql", "SELECT sum(sipHash64(number)) FROM numbers(1e10)"], stack.env)
    assert cli.returncode == 1 and "JW_SQL_TIMEOUT_S" in cli.stderr
    # the sink is still there and answers the next query
    assert ask(port, "SELECT count() FROM journeywatch.touchpoints")[0] == 200


def test_the_api_needs_sign_in_and_the_read_token_is_enough(
    stack: Topology, tmp_path: Path
) -> None:
    port = stack.status_port
    status, body = ask(port, "SELECT 1", token=None)
    assert status == 401 and "Authorization: Bearer" in body["error"]
    assert ask(port, "SELECT 1", token="wrong-token-0123456789")[0] == 401
    assert ask(port, "SELECT 1 AS one", token=WEB_READ_TOKEN) == (
        200,
        {
            "columns": [{"name": "one", "type": "UInt8"}],
            "rows": [[1]],
            "row_count": 1,
            "elapsed_s": pytest.approx(0, abs=5),
        },
    )
    # a query file as it is (text/plain), unqualified names in journeywatch's database
    plain = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/sql",
        data=b"-- how many\nSELECT count() AS n FROM touchpoints;\n",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {WEB_READ_TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(plain, timeout=30) as response:
        counted = orjson.loads(response.read())
    assert counted["columns"] == [{"name": "n", "type": "UInt64"}] and counted["rows"][0][0] > 0
    # the CLI without any token (and no run's generated one): 401, and which token to set
    env = {k: v for k, v in stack.env.items() if not k.startswith("JW_WEB_")}
    env["JW_DATA_DIR"] = str(tmp_path / "elsewhere")
    anonymous = run_cli(["sql", "SELECT 1"], env)
    assert anonymous.returncode == 1
    assert "HTTP 401" in anonymous.stderr and "JW_WEB_READ_TOKEN" in anonymous.stderr
    # while the sink owns chdb, --direct says to go through it
    direct = run_cli(["sql", "--direct", "SELECT 1"], stack.env)
    assert direct.returncode == 1 and "leave out --direct" in direct.stderr
