from __future__ import annotations

from datetime import UTC, datetime

import orjson

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.settings import Settings
from pipeline.simulator import SimpleTrafficSource

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_simulated_events_are_valid_reproducible_and_cover_the_four_channels() -> None:
    first = list(SimpleTrafficSource(seed=7).events(NOW, 3000))
    assert first == list(SimpleTrafficSource(seed=7).events(NOW, 3000))
    assert first != list(SimpleTrafficSource(seed=8).events(NOW, 3000))
    decoded = [decode_touchpoint(orjson.dumps(e), NOW) for e in first]
    assert all(isinstance(d, TouchpointEvent) for d in decoded)
    assert {e["channel"] for e in first} == {"web", "app", "call_center", "store"}
    assert len({e["event_id"] for e in first}) == len(first)
    assert any(e["outcome"] == "error" for e in first)


def test_a_touch_from_canonical_json_equals_one_from_the_validated_event() -> None:
    from datetime import UTC, datetime

    import orjson

    from pipeline.contract import TouchpointEvent, decode_touchpoint
    from pipeline.scenario import DaySimulator, default_incidents
    from pipeline.touch import Touch

    start = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1000)
    simulator = DaySimulator(4, start, 200, default_incidents(start))
    received = datetime(2026, 11, 1, tzinfo=UTC)
    for event in simulator.generate():
        decoded = decode_touchpoint(orjson.dumps(event), received)
        assert isinstance(decoded, TouchpointEvent)
        assert Touch.from_canonical(orjson.loads(decoded.to_json())) == Touch.from_event(decoded)


def test_steady_runs_without_a_seed_never_repeat_event_ids() -> None:
    """ClickHouse keeps one row per event id: a second `make run` must not resend the first's."""
    from streams.producer import SimulatorThread

    runs = [SimulatorThread(Settings(), 10, None) for _ in range(2)]
    assert runs[0].seed != runs[1].seed
    ids = [{r._source.next_event(NOW)["event_id"] for _ in range(100)} for r in runs]
    assert not ids[0] & ids[1]
    again = [SimulatorThread(Settings(), 10, 7)._source.next_event(NOW) for _ in range(2)]
    assert again[0] == again[1]  # a given seed repeats its stream exactly
