"""One outcome per journey in ClickHouse: a drop-off that touchpoints then convert is retracted,
and journey_events, the per-minute flow and the journeys view agree (the real embedded ClickHouse,
the real writer, the engine's own outputs)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from pipeline.engine import JourneyEngine, Output
from sinks.clickhouse import migrations
from sinks.clickhouse.migrations import apply_migrations
from sinks.clickhouse.rows import OUTPUT_COLUMNS, output_row
from sinks.clickhouse.writer import ClickHouseWriter, PartitionBatch
from streams.journeys import JOURNEY_OUTPUT_TYPES
from tests.helpers import ClickHouse
from tests.unit.journeys import CATALOG, T0, H, M, touch

pytestmark = pytest.mark.integration

CART_TIMEOUT = next(
    s.timeout
    for d in CATALOG.journeys
    if d.name == "online_purchase"
    for s in d.stages
    if s.name == "cart"
)


def scenario() -> list[Output]:
    """Four customers: converted in time; dropped off; dropped off, then converted by a late
    store export (retracted); dropped off, resumed, stalled again (one drop-off, kept)."""
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    out: list[Output] = []
    for item in (
        touch(0, "cart.add", action="add", device="quick"),
        touch(0, "cart.add", action="add", device="gone", channel="app"),
        touch(0, "cart.add", action="add", device="late"),
        touch(0, "cart.add", action="add", device="again"),
        touch(5 * M, "checkout.confirmation", device="quick"),
    ):
        out += engine.submit(item)
    out += engine.advance(T0 + CART_TIMEOUT + 10 * M)  # three drop-offs reported
    out += engine.submit(touch(CART_TIMEOUT - 30 * M, "checkout.confirmation", device="late"))
    out += engine.submit(touch(3 * H, "checkout.payment", action="submit", device="again"))
    out += engine.advance(2**62)
    return out


def write(client: Any, db: str, outputs: list[Output]) -> None:
    """Through the real writer, in three batches of one partition: up to the drop-offs, the
    rest, then the late customer's drop-off again (re-emitted after a crash, after its
    retraction was written)."""
    writer = ClickHouseWriter(client, db)
    journey = [o for o in outputs if o.type in JOURNEY_OUTPUT_TYPES]
    moments = [o for o in outputs if o.type not in JOURNEY_OUTPUT_TYPES]
    cut = max(i for i, o in enumerate(journey) if o.name == "dropped_off") + 1
    retraction = next(o for o in journey if o.name == "dropoff_retracted")
    again = next(
        o for o in journey if o.name == "dropped_off" and o.journey_id == retraction.journey_id
    )
    offset = 0
    for table, batch in (
        ("journey_events", journey[:cut]),
        ("journey_events", [again, *journey[cut:]]),  # redelivered just before its retraction
        ("journey_events", [again]),  # and once more, after it
        ("experience_moments", moments),
    ):
        rows = [
            output_row(o.as_dict(), f"{table}.out", "t", 0, offset + n) for n, o in enumerate(batch)
        ]
        offsets = list(range(offset, offset + len(rows)))
        offset += len(rows)
        writer.write(table, OUTPUT_COLUMNS, PartitionBatch(f"{table}.out", "t", 0, offsets, rows))


def _outcomes(client: Any, db: str) -> dict[str, str]:
    """journey_id -> outcome, as the ``journeys`` view has it."""
    rows = client.query(f"SELECT journey_id, outcome FROM {db}.journeys").result_rows
    return {str(journey_id): str(outcome) for journey_id, outcome in rows}


def test_one_terminal_outcome_per_journey_and_every_reader_agrees(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    apply_migrations(client, db, retention_days=3650)
    outputs = scenario()
    names = Counter(o.name for o in outputs if o.type == "journey")
    assert (names["dropped_off"], names["dropoff_retracted"], names["converted"]) == (3, 1, 2)
    write(client, db, outputs)

    final = client.query(
        f"SELECT journey_id, groupArray(name) FROM {db}.journey_events FINAL "
        "WHERE type = 'journey' AND name IN ('converted', 'dropped_off', 'merged') "
        "GROUP BY journey_id"
    ).result_rows
    outcome = {journey_id: names for journey_id, names in final}
    assert all(len(n) == 1 for n in outcome.values()), outcome
    assert sorted(n[0] for n in outcome.values()) == [
        "converted",
        "converted",
        "dropped_off",
        "dropped_off",
    ]

    # the journeys view equals journey_events FINAL, journey by journey
    view = _outcomes(client, db)
    assert view == {journey_id: n[0] for journey_id, n in outcome.items()}

    # the per-minute flow nets the retracted drop-off out, in the key it was counted in
    flow: Counter[tuple[Any, ...]] = Counter()
    for minute, journey, stage, channel, name, n in client.query(
        f"SELECT minute, journey, stage, channel, name, journeys FROM {db}.journey_flow_1m "
        "WHERE name IN ('converted', 'dropped_off')"
    ).result_rows:
        flow[(minute, journey, stage, channel, name)] += int(n)
    raw = Counter(
        (minute, journey, stage, channel, name)
        for minute, journey, stage, channel, name in client.query(
            f"SELECT toStartOfMinute(at), journey, stage, channel, name "
            f"FROM {db}.journey_events FINAL WHERE name IN ('converted', 'dropped_off')"
        ).result_rows
    )
    assert flow == raw
    assert sum(n for k, n in flow.items() if k[4] == "dropped_off") == 2

    # the converted journey keeps its conversion's score, not the drop-off's (stamped later)
    retraction = next(o for o in outputs if o.name == "dropoff_retracted")
    scores = {
        dict(o.detail)["outcome"]: o.value
        for o in outputs
        if o.type == "score" and o.journey_id == retraction.journey_id
    }
    assert set(scores) == {"dropped_off", "converted"}
    (score,) = client.query(
        f"SELECT score FROM {db}.journeys WHERE journey_id = {{j:String}}",
        parameters={"j": retraction.journey_id},
    ).result_rows[0]
    assert score == pytest.approx(scores["converted"])


def test_the_migration_ranks_journeys_written_before_it(clickhouse: ClickHouse) -> None:
    """Journeys in the tables before 0008: the backfill ranks their outcomes, so a journey the
    old code reported dropped off and then converted shows converted (not by event time)."""
    client, db = clickhouse
    before = [m for m in migrations.load_migrations() if m.version < 8]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(migrations, "load_migrations", lambda: before)
        apply_migrations(client, db, retention_days=3650)
        outputs = [o for o in scenario() if o.name != "dropoff_retracted"]
        rows = [
            output_row(o.as_dict(), "old", "t", 0, n)
            for n, o in enumerate(o for o in outputs if o.type in JOURNEY_OUTPUT_TYPES)
        ]
        client.insert(f"{db}.journey_events", rows, column_names=list(OUTPUT_COLUMNS))
        old = _outcomes(client, db)
    late = next(o.journey_id or "" for o in outputs if o.name == "converted" and o.at > T0 + H)
    assert old[late] == "dropped_off"  # the old view: the latest event time, the drop-off's
    apply_migrations(client, db, retention_days=3650)
    new = _outcomes(client, db)
    assert new[late] == "converted"
    assert Counter(new.values()) == Counter({"converted": 2, "dropped_off": 2})


def test_a_journey_retired_by_an_edit_is_retired_in_every_reader(clickhouse: ClickHouse) -> None:
    """The outputs of a worker started with an edited journeys file (tests/unit/
    test_journey_edits.py): retired journeys show ``retired`` in the journeys view, once, never
    as active or dropped off; the others as journey_events has them."""
    from tests.unit.test_journey_edits import AFTER, BEFORE, EDITED, restart

    client, db = clickhouse
    apply_migrations(client, db, retention_days=3650)
    released = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    before = [o for t in BEFORE for o in released.submit(t)]
    before += released.advance(T0)  # what the released file reported before the restart
    after, _ = restart(BEFORE, AFTER, EDITED)
    outputs = before + after
    rows = [
        output_row(o.as_dict(), "edit", "t", 0, n)
        for n, o in enumerate(o for o in outputs if o.type in JOURNEY_OUTPUT_TYPES)
    ]
    client.insert(f"{db}.journey_events", rows, column_names=list(OUTPUT_COLUMNS))
    view = _outcomes(client, db)
    retired = {o.journey_id or "" for o in after if o.name == "retired"}
    assert len(retired) == 2 and {view[j] for j in retired} == {"retired"}
    terminal = {
        o.journey_id or "": o.name
        for o in outputs
        if o.name in ("converted", "dropped_off", "retired")
    }
    assert {j: view[j] for j in terminal} == terminal
    assert Counter(view.values())["active"] == 0
    (version,) = client.query(
        f"SELECT DISTINCT JSONExtractString(detail, 'definition_version') FROM {db}.journey_events "
        "WHERE name = 'dropped_off' AND journey = 'online_purchase' AND at > {t:DateTime64(3)}",
        parameters={"t": (T0 + 1) / 1000},
    ).result_rows[0]
    assert version == EDITED.journeys[0].version
