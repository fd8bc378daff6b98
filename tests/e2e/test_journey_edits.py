"""A worker stopped mid-stream and restarted with an edited journeys file (issue #22): the
journeys in flight follow the documented rule (docs/journey-engine.md, "Editing journeys") and
nothing crashes. Events go through the collector; results are read from ClickHouse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import ensure_topics
from tests.e2e.stack import PARTITIONS, Topology, clock_events, day_start
from tests.helpers import query_chdb, wait_until
from tests.unit.test_journey_edits import DEFAULT, EDITED, edited

pytestmark = pytest.mark.e2e

M = 60_000
H = 60 * M
D = 24 * H


def event(at: int, touchpoint: str, device: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.fromtimestamp(at / 1000, UTC).isoformat(),
        "channel": fields.pop("channel", "web"),
        "touchpoint": touchpoint,
        "action": fields.pop("action", "view"),
        "device_id": device,
        "source": "test",
        **fields,
    }


def test_a_worker_restarted_with_an_edited_journeys_file(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    start = day_start()
    before = [
        event(start, "cart.add", "carty", action="add"),
        event(start, "checkout.payment", "payer", action="submit"),
        event(start, "app.install", "onboarder", channel="app"),
        event(start, "ivr.menu", "caller", channel="call_center"),
        event(start + 1 * M, "queue.wait", "caller", channel="call_center"),
        event(start, "home.view", "browser"),
        event(start, "cart.add", "buyer", action="add"),
    ]
    after = [
        event(start + 10 * M, "product.view", "browser"),
        event(start + 20 * M, "checkout.confirmation", "buyer"),
    ]
    old, new = tmp_path / "journeys.yaml", tmp_path / "journeys-edited.yaml"
    old.write_text(DEFAULT)
    new.write_text(yaml.safe_dump(edited(), sort_keys=False))
    ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
    topology = Topology(broker, tmp_path, allowed_lateness_s=0.5, journeys_file=old)
    chdb = topology.chdb
    try:
        topology.start_sink()
        topology.start_collector()
        topology.start(0)
        wait_until(lambda: topology.ready(0), 120, "the worker", 0.5)
        assert topology.post(before) == 202

        def started() -> bool:
            by_name = topology.stats().get("journey_events_by_name", {})
            return int(by_name.get("started", 0)) >= 6

        wait_until(started, 120, "six journeys started under the released file", 0.5)
        wait_until(topology.drained, 120, "every touchpoint processed", 0.5)
        topology.retire(0)  # stopped mid-stream (SIGTERM), every journey in flight
        topology.env["JW_JOURNEYS_FILE"] = str(new)
        topology.start(0)
        wait_until(lambda: topology.ready(0), 120, "the worker with the edited file", 0.5)
        assert topology.post(after) == 202
        assert topology.post(clock_events(start + 3 * D)) == 202  # every deadline passes

        def decided() -> bool:
            by_name = topology.stats().get("journey_events_by_name", {})
            return sum(int(by_name.get(n, 0)) for n in ("converted", "dropped_off", "retired")) >= 6

        wait_until(decided, 120, "six outcomes in ClickHouse", 0.5)
        wait_until(topology.drained, 120, "the clock events processed", 0.5)
        assert topology.stats().get("journey_errors", 0) == 0
    finally:
        topology.stop()
    log = (tmp_path / "worker-0.log").read_text()
    assert "journey definitions changed since this partition's state was saved" in log
    rows = query_chdb(
        chdb,
        "SELECT j.outcome, j.journey, j.stage, e.at, e.reason, e.version "
        "FROM journeywatch.journeys AS j INNER JOIN ("
        "  SELECT journey_id, toUnixTimestamp64Milli(at) AS at, "
        "    JSONExtractString(detail, 'reason') AS reason, "
        "    JSONExtractString(detail, 'definition_version') AS version "
        "  FROM journeywatch.journey_events FINAL "
        "  WHERE name IN ('converted', 'dropped_off', 'retired')"
        ") AS e USING journey_id ORDER BY j.journey, j.stage",
    )
    outcomes = sorted((r[0], r[1], r[2], int(r[3]) - start, r[4]) for r in rows)
    assert outcomes == sorted(
        [
            # a time-out changed (2h -> 1h): recomputed from the last activity
            ("dropped_off", "online_purchase", "cart", 1 * H, ""),
            # a stage renamed (payment -> checkout, renamed_from): continues under its new name
            ("dropped_off", "online_purchase", "checkout", 30 * M, ""),
            # stages re-ordered (consideration now first): the journey keeps its stage
            ("dropped_off", "online_purchase", "awareness", 10 * M + 1 * D, ""),
            # converted after the edit, its stage by its new name
            ("converted", "online_purchase", "cart", 20 * M, ""),
            # a journey removed: retired at its last activity, not dropped off
            ("retired", "app_onboarding", "install", 0, "journey_removed"),
            # a stage removed: retired too
            ("retired", "support_case", "diagnosis", 1 * M, "stage_removed"),
        ]
    ), outcomes
    versions = {r[1]: r[5] for r in rows if r[0] != "retired"}
    assert versions == {"online_purchase": EDITED.journeys[0].version}
    twice = query_chdb(
        chdb,
        "SELECT journey_id FROM journeywatch.journey_events FINAL WHERE type = 'journey' "
        "AND name IN ('converted', 'dropped_off', 'retired') GROUP BY journey_id "
        "HAVING count() > 1",
    )
    assert twice == []
