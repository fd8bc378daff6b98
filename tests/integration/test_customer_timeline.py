"""The customer timeline on a real embedded ClickHouse (chdb): touchpoints through the real
row builders and writer, outputs of the real journey engine, migration 0012's views and tables,
``read_timeline`` by every kind of identifier, erasure of the timeline's copies, and one
customer's timeline read among a million touchpoints."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.engine import JourneyEngine, Output
from pipeline.pii import hash_email, hash_phone
from pipeline.touch import Touch
from sinks.clickhouse.customers import TimelineError, parse_identifier, read_timeline
from sinks.clickhouse.erasure import delete_person, find_person
from sinks.clickhouse.migrations import apply_migrations
from sinks.clickhouse.rows import OUTPUT_COLUMNS, TOUCHPOINT_COLUMNS, output_row, touchpoint_row
from sinks.clickhouse.writer import ClickHouseWriter, PartitionBatch
from tests.helpers import ClickHouse
from tests.unit.journeys import CATALOG

pytestmark = pytest.mark.integration

KEY = b"test-pii-key"
START = datetime(2026, 12, 1, 9, tzinfo=UTC)
JANE_EMAIL = "Jane.Doe@Example.com"
JANE_PHONE = "+44 20 7946 0000"


def _event(n: int, minutes: float, channel: str, touchpoint: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"ev-{n}",
        "occurred_at": (START + timedelta(minutes=minutes)).isoformat(),
        "channel": channel,
        "touchpoint": touchpoint,
        "action": fields.pop("action", "view"),
        "source": "test",
        **fields,
    }


def jane_and_bob() -> list[dict[str, Any]]:
    """Jane browses anonymously, logs in, fails to pay, calls, buys in a store; Bob browses."""
    anon = {"anonymous_id": "anon-jane", "device_id": "dev-jane"}
    jane = {"customer_id": "jane-7"}
    email = hash_email(JANE_EMAIL, KEY)
    phone = hash_phone(JANE_PHONE, KEY)
    return [
        _event(1, 0, "web", "home.view", **anon),
        _event(2, 1, "web", "product.view", **anon),
        _event(3, 2, "web", "cart.add", action="add", **anon),
        _event(4, 3, "web", "account.login", action="login", **jane, **anon, email_hash=email),
        _event(
            5,
            4,
            "web",
            "checkout.payment",
            action="submit",
            outcome="error",
            outcome_reason="card_declined",
            **jane,
            device_id="dev-jane",
        ),
        _event(6, 20, "call_center", "ivr.menu", phone_hash=phone, session_hint="call-1"),
        _event(
            7,
            22,
            "call_center",
            "agent.talk",
            action="resolve",
            phone_hash=phone,
            customer_id="jane-7",
            session_hint="call-1",
            csat=2,
            nps=4,
        ),
        _event(
            8,
            120,
            "store",
            "till.purchase",
            action="purchase",
            customer_id="jane-7",
            loyalty_id="L-jane",
            revenue=59.9,
            currency="EUR",
            session_hint="visit-1",
        ),
        _event(9, 5, "web", "home.view", customer_id="bob-2", device_id="dev-bob"),
        _event(10, 6, "web", "product.view", customer_id="bob-2", device_id="dev-bob"),
    ]


def _decoded(events: list[dict[str, Any]]) -> list[TouchpointEvent]:
    received = START + timedelta(days=1)
    found = []
    for event in events:
        decoded = decode_touchpoint(orjson.dumps(event), received)
        assert isinstance(decoded, TouchpointEvent), decoded
        found.append(decoded)
    return found


def run_engine(events: list[TouchpointEvent]) -> list[Output]:
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    out: list[Output] = []
    for touch in sorted((Touch.from_event(e) for e in events), key=lambda t: t.at):
        out += engine.submit(touch)
    out += engine.advance(int((START + timedelta(days=3)).timestamp() * 1000))
    return out


def store(client: Any, db: str, events: list[TouchpointEvent], outputs: list[Output]) -> None:
    writer = ClickHouseWriter(client, db)
    touch_rows = [
        touchpoint_row(orjson.loads(e.to_json()), "touchpoints.by_person", "t1", 0, n)
        for n, e in enumerate(events)
    ]
    writer.write(
        "touchpoints",
        TOUCHPOINT_COLUMNS,
        PartitionBatch("touchpoints.by_person", "t1", 0, range(len(touch_rows)), touch_rows),
    )
    for table, topic, journey_side in (
        ("journey_events", "journey.events", True),
        ("experience_moments", "experience.moments", False),
    ):
        # (streams/journeys.py: journey and identity outputs to journey.events, the rest to
        # experience.moments)
        chosen = [o for o in outputs if (o.type in ("journey", "identity")) == journey_side]
        rows = [output_row(o.as_dict(), topic, "t2", 0, n) for n, o in enumerate(chosen)]
        writer.write(table, OUTPUT_COLUMNS, PartitionBatch(topic, "t2", 0, range(len(rows)), rows))


def test_a_customers_timeline_by_any_identifier_equals_what_happened(
    clickhouse: ClickHouse,
) -> None:
    client, db = clickhouse
    apply_migrations(client, db, 3650)
    events = _decoded(jane_and_bob())
    outputs = run_engine(events)
    store(client, db, events, outputs)
    timeline = read_timeline(client, db, "customer_id:jane-7")
    assert timeline["person_id"] == "c:jane-7"
    assert [t["event_id"] for t in timeline["touchpoints"]] == [f"ev-{n}" for n in range(1, 9)]
    assert [t["channel"] for t in timeline["touchpoints"]] == (
        ["web"] * 5 + ["call_center"] * 2 + ["store"]
    )
    email, phone = hash_email(JANE_EMAIL, KEY), hash_phone(JANE_PHONE, KEY)
    # the anonymous visit joined at the login, the anonymous call when the caller was identified
    assert timeline["merges"] == [
        {
            "at": "2026-12-01T09:03:00.000Z",
            "from_person": "a:device_id:dev-jane",
            "into_person": "c:jane-7",
            "event_id": "ev-4",
            "identifiers": ["anonymous_id:anon-jane", "device_id:dev-jane"],
        },
        {
            "at": "2026-12-01T09:22:00.000Z",
            "from_person": f"a:phone_hash:{phone}",
            "into_person": "c:jane-7",
            "event_id": "ev-7",
            "identifiers": [f"phone_hash:{phone}"],
        },
    ]
    linked = {i["identifier"]: (i["person_id"], i["event_id"]) for i in timeline["identifiers"]}
    assert linked == {
        "anonymous_id:anon-jane": ("a:device_id:dev-jane", "ev-1"),
        "device_id:dev-jane": ("a:device_id:dev-jane", "ev-1"),
        "customer_id:jane-7": ("c:jane-7", "ev-4"),
        f"email_hash:{email}": ("c:jane-7", "ev-4"),
        f"phone_hash:{phone}": (f"a:phone_hash:{phone}", "ev-6"),
        "loyalty_id:L-jane": ("c:jane-7", "ev-8"),
    }
    # every journey, negative moment, MOT and KPI the engine emitted for her persons
    persons = set(timeline["persons"])
    mine = {o.output_id: o for o in outputs if o.person_id in persons}
    assert {j["journey_id"] for j in timeline["journeys"]} == {
        o.journey_id for o in mine.values() if o.type == "journey" and o.journey_id
    }
    assert sorted(m["kind"] for m in timeline["negative_moments"]) == sorted(
        o.name for o in mine.values() if o.type == "negative_moment"
    )
    assert timeline["negative_moments"], "the declined payment is a negative moment"
    assert sorted((m["name"], m["passed"]) for m in timeline["moments_of_truth"]) == sorted(
        (o.name, bool(dict(o.detail)["passed"]))
        for o in mine.values()
        if o.type == "moment_of_truth"
    )
    kpis = timeline["kpis"]
    assert kpis["csat"] == {"answers": 1, "mean": 2.0}
    assert kpis["nps"]["detractors"] == 1 and kpis["nps"]["score"] == -100.0
    assert kpis["value"]["revenue"] == 59.9 and kpis["value"]["currencies"] == ["EUR"]
    for journey in timeline["journeys"]:
        final = [
            o.name
            for o in mine.values()
            if o.journey_id == journey["journey_id"] and o.name in ("converted", "dropped_off")
        ]
        assert journey["outcome"] == (final[-1] if final else "active"), journey
        assert journey["stages"][0]["stage"] == journey["stages"][0]["stage"]
    # any identifier leads to the same timeline: raw e-mail and phone hashed, the anonymous id
    hashers = {
        "hash_email": lambda v: hash_email(v, KEY),
        "hash_phone": lambda v: hash_phone(v, KEY),
    }
    for given in (
        "jane-7",
        "c:jane-7",
        f"email:{JANE_EMAIL}",
        JANE_EMAIL,
        f"phone:{JANE_PHONE}",
        "anonymous_id:anon-jane",
        "a:device_id:dev-jane",
        "loyalty_id:L-jane",
    ):
        key = parse_identifier(given, **hashers)
        assert JANE_EMAIL not in key and "7946" not in key
        other = read_timeline(client, db, key)
        assert other["person_id"] == "c:jane-7", given
        assert other["touchpoints"] == timeline["touchpoints"], given
    # Bob's are his
    bob = read_timeline(client, db, "customer_id:bob-2")
    assert [t["event_id"] for t in bob["touchpoints"]] == ["ev-9", "ev-10"]
    with pytest.raises(TimelineError) as nobody:
        read_timeline(client, db, "customer_id:nobody")
    assert nobody.value.status == 404

    # erasure takes the timeline's copies too
    person = find_person(client, db, ["customer_id:jane-7"])
    deleted = delete_person(client, db, person)
    for table in ("touchpoints_by_identifier", "person_outputs", "identity_links"):
        assert deleted[table] > 0, table
        left = client.query(
            f"SELECT count() FROM {db}.{table} WHERE "
            + ("person_id" if table != "touchpoints_by_identifier" else "identifier")
            + " LIKE '%jane%'"
        ).result_rows[0][0]
        assert left == 0, table
    with pytest.raises(TimelineError):
        read_timeline(client, db, "customer_id:jane-7")
    assert [
        t["event_id"] for t in read_timeline(client, db, parse_identifier("bob-2"))["touchpoints"]
    ] == [
        "ev-9",
        "ev-10",
    ]


def test_one_timeline_among_a_million_touchpoints_reads_by_key(clickhouse: ClickHouse) -> None:
    """1,000,000 touchpoints of 200,000 persons, 400,000 links and 1,000,000 outputs
    beside Jane's: her timeline reads a few key ranges (well under 100 ms here; the bound
    below leaves room for a busy CI machine)."""
    client, db = clickhouse
    apply_migrations(client, db, 3650)
    events = _decoded(jane_and_bob())
    outputs = run_engine(events)
    store(client, db, events, outputs)
    at = "toDateTime64('2026-11-01 00:00:00', 3, 'UTC') + number"
    client.command(
        f"INSERT INTO {db}.touchpoints (event_id, occurred_at, received_at, channel, touchpoint, "
        "action, customer_id, device_id) "
        f"SELECT concat('bg-', toString(number)), {at}, {at}, 'web', 'home.view', 'view', "
        "concat('cust-', toString(number % 200000)), concat('dev-', toString(number % 200000)) "
        "FROM numbers(1000000)"
    )
    client.command(
        f"INSERT INTO {db}.journey_events (output_id, type, name, at, person_id, journey, "
        "journey_id, stage, detail) "
        f"SELECT concat('o-', toString(number)), 'identity', 'linked', {at}, "
        "concat('c:cust-', toString(number % 200000)), '', '', '', "
        "concat('{\"identifier\":\"device_id:dev-', toString(number % 200000), '\"}') "
        "FROM numbers(400000)"
    )
    client.command(
        f"INSERT INTO {db}.experience_moments (output_id, type, name, at, person_id, journey, "
        "journey_id, stage, detail) "
        f"SELECT concat('m-', toString(number)), 'negative_moment', 'error', {at}, "
        "concat('c:cust-', toString(number % 200000)), 'online_purchase', "
        "concat('j-', toString(number % 300000)), 'cart', '{}' FROM numbers(1000000)"
    )
    client.command(f"OPTIMIZE TABLE {db}.touchpoints_by_identifier FINAL")
    client.command(f"OPTIMIZE TABLE {db}.person_outputs FINAL")
    assert (
        client.query(f"SELECT count() FROM {db}.touchpoints_by_identifier").result_rows[0][0]
        >= 2_000_000
    )
    seconds = []
    for _ in range(7):
        started = time.perf_counter()
        timeline = read_timeline(client, db, "anonymous_id:anon-jane")
        seconds.append(time.perf_counter() - started)
        assert len(timeline["touchpoints"]) == 8
    median = statistics.median(seconds)
    print(f"customer timeline among 1M touchpoints: median {median * 1000:.1f} ms")
    assert median < 0.5, seconds
    cust = read_timeline(client, db, "customer_id:cust-42")
    assert len(cust["touchpoints"]) == 5 and len(cust["negative_moments"]) == 5


def test_a_kiosk_shared_by_customers_names_nobody_and_lends_nobody_its_touchpoints(
    clickhouse: ClickHouse,
) -> None:
    """A store kiosk's device id seen with more customers than allowed is blocked by the
    engine: asking by it is a 404, and no customer's timeline gets the others' kiosk visits or
    the kiosk's anonymous ones."""
    client, db = clickhouse
    apply_migrations(client, db, 3650)
    customers = [f"k-{n}" for n in range(CATALOG.detectors.max_customers_per_identifier + 2)]
    raw = [
        _event(100 + n, n, "store", "store.visit", customer_id=c, device_id="kiosk-1")
        for n, c in enumerate(customers)
    ]
    raw.append(_event(199, 30, "store", "store.visit", device_id="kiosk-1"))  # nobody signed in
    events = _decoded(raw)
    outputs = run_engine(events)
    assert [o for o in outputs if o.name == "identifier_blocked"], "the kiosk was never blocked"
    store(client, db, events, outputs)
    with pytest.raises(TimelineError) as shared:
        read_timeline(client, db, "device_id:kiosk-1")
    assert shared.value.status == 404 and "shared" in str(shared.value)
    for n, customer in enumerate(customers):
        timeline = read_timeline(client, db, f"customer_id:{customer}")
        assert [t["event_id"] for t in timeline["touchpoints"]] == [f"ev-{100 + n}"], customer
        kiosk = [i for i in timeline["identifiers"] if i["identifier"] == "device_id:kiosk-1"]
        assert all(i["blocked"] for i in kiosk)
