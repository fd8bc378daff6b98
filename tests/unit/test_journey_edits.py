"""Editing the journeys file under journeys in flight (docs/journey-engine.md, "Editing
journeys"): saved state names journeys and stages, and a worker started with an edited file
applies the documented rule to each in-flight journey."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from pipeline.definitions import DefinitionError, JourneyCatalog, parse_catalog
from pipeline.edits import changes
from pipeline.engine import JourneyEngine, Output, PersonState
from tests.unit.journeys import CATALOG, T0, D, H, M, named, touch

DEFAULT = resources.files("pipeline").joinpath("defaults/journeys.yaml").read_text("utf-8")


def edited() -> dict[str, Any]:
    """The default file, edited as CX teams do: online_purchase's first two stages swapped, a
    stage added, cart's time-out shortened, payment renamed checkout; support_case's diagnosis
    stage removed; app_onboarding removed."""
    data: dict[str, Any] = yaml.safe_load(DEFAULT)
    journeys = {j["name"]: j for j in data["journeys"]}
    purchase = journeys["online_purchase"]["stages"]
    awareness, consideration, cart, payment = purchase
    cart["timeout"] = "1h"
    payment["name"], payment["renamed_from"] = "checkout", "payment"
    wishlist = {"name": "wishlist", "match": [{"touchpoint": "wishlist.*"}], "timeout": "3d"}
    journeys["online_purchase"]["stages"] = [consideration, awareness, cart, wishlist, payment]
    journeys["support_case"]["stages"] = journeys["support_case"]["stages"][:1]
    data["journeys"] = [j for j in data["journeys"] if j["name"] != "app_onboarding"]
    return data


EDITED = JourneyCatalog.model_validate(edited())


def restart(
    before: list[Any], after: list[Any], catalog: JourneyCatalog, times: int = 1
) -> tuple[list[Output], JourneyEngine]:
    """``before`` applied by the released file's engine, its state saved; an engine with
    ``catalog`` takes over (``times`` restarts before anything fires), applies ``after`` and
    runs to the end of time."""
    old = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    for item in before:
        old.submit(item)
    snapshot, identity = old.snapshot(), old.identity
    engine = old
    for _ in range(times):
        engine = JourneyEngine(catalog, allowed_lateness_ms=0)
        engine.identity = identity
        engine.restore(snapshot)
        snapshot = engine.snapshot()
    out: list[Output] = []
    for item in after:
        out += engine.submit(item)
    out += engine.advance(T0 + 30 * D)
    return out, engine


BEFORE = [
    touch(-2 * D, "app.install", channel="app", device="onboarded_earlier"),
    touch(0, "cart.add", action="add", device="carty"),
    touch(0, "checkout.payment", action="submit", device="payer"),
    touch(0, "app.install", channel="app", device="onboarder"),
    touch(0, "ivr.menu", channel="call_center", device="caller"),
    touch(1 * M, "queue.wait", channel="call_center", device="caller"),
    touch(0, "home.view", device="browser"),
]
AFTER = [touch(10 * M, "product.view", device="browser")]


def by_person(outputs: list[Output], name: str) -> dict[str, Output]:
    return {o.person_id: o for o in named(outputs, "journey", name)}


def person_of(engine: JourneyEngine, device: str) -> str:
    return engine.identity.owner[f"device_id:{device}"]


def test_in_flight_journeys_follow_the_documented_rule_after_an_edit() -> None:
    out, engine = restart(BEFORE, AFTER, EDITED)
    person = {d: person_of(engine, d) for d in ("carty", "payer", "onboarder", "caller", "browser")}
    dropped = by_person(out, "dropped_off")
    retired = by_person(out, "retired")
    # a time-out changed: the deadline recomputed from the last activity with the new value
    assert (dropped[person["carty"]].at, dropped[person["carty"]].stage) == (T0 + 1 * H, "cart")
    # a stage renamed (renamed_from): the journey continues under the new name
    assert dropped[person["payer"]].stage == "checkout"
    assert dropped[person["payer"]].at == T0 + 30 * M
    # a journey removed: in flight, it ends retired at its last activity, not dropped off
    assert (retired[person["onboarder"]].journey, retired[person["onboarder"]].at) == (
        "app_onboarding",
        T0,
    )
    assert dict(retired[person["onboarder"]].detail)["reason"] == "journey_removed"
    # a stage removed: the journeys waiting at it end retired too
    assert (retired[person["caller"]].journey, retired[person["caller"]].stage) == (
        "support_case",
        "diagnosis",
    )
    assert dict(retired[person["caller"]].detail)["reason"] == "stage_removed"
    assert retired[person["caller"]].at == T0 + 1 * M
    # stages re-ordered: the journey keeps its stage; progress follows the new order (the
    # consideration stage now comes first: no stage reached)
    browser = [o for o in out if o.person_id == person["browser"] and o.type == "journey"]
    assert [o.name for o in browser] == ["dropped_off"]
    assert (browser[0].stage, browser[0].at) == ("awareness", T0 + 10 * M + 1 * D)
    # retired is the journey's one outcome: never also dropped off
    assert not set(retired) & set(dropped)
    assert len(retired) == 2 and len(out) == len({o.output_id for o in out})
    # a journey of the removed definition that had dropped off keeps its drop-off: forgotten
    assert person_of(engine, "onboarded_earlier") not in retired
    # outputs carry the definition's version: the edited journey's is new
    versions = {d.name: d.version for d in EDITED.journeys}
    assert (
        dict(dropped[person["carty"]].detail)["definition_version"] == versions["online_purchase"]
    )
    assert versions["online_purchase"] != CATALOG.journeys[0].version


def test_what_decoding_changed_is_counted_for_the_workers_log() -> None:
    old = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    for item in BEFORE:
        old.submit(item)
    engine = JourneyEngine(EDITED, allowed_lateness_ms=0)
    engine.restore(old.snapshot())
    assert engine.state_names.changes == {
        "online_purchase.payment: continues as online_purchase.checkout": 1,
        "app_onboarding: not in the file: its in-flight journeys end retired": 2,
        "support_case.diagnosis: not in the file: its in-flight journeys end retired": 1,
    }


def test_a_retired_journey_survives_restarts_and_hand_offs_until_it_fires_once() -> None:
    once, _ = restart(BEFORE, AFTER, EDITED)
    twice, _ = restart(BEFORE, AFTER, EDITED, times=3)
    assert sorted(o.output_id for o in once) == sorted(o.output_id for o in twice)
    # handed to another partition before it fires (an identity hand-off): retired there
    old = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    old.submit(BEFORE[3])
    here = JourneyEngine(EDITED, allowed_lateness_ms=0)
    here.identity = old.identity
    here.restore(old.snapshot())
    (person_id,) = here.persons
    record, identifiers, _ = here.extract(person_id)
    assert record is not None
    there = JourneyEngine(EDITED, allowed_lateness_ms=0)
    there.load_person(person_id, [record[0], identifiers])
    assert here.advance(T0 + D) == []
    out = there.advance(T0 + D)
    assert [(o.name, o.journey) for o in out] == [("retired", "app_onboarding")]
    # merged into another person before it fires: retired under the person it merged into
    old = JourneyEngine(CATALOG, allowed_lateness_ms=0)  # (extract took the identifiers)
    old.submit(BEFORE[3])
    merging = JourneyEngine(EDITED, allowed_lateness_ms=0)
    merging.identity = old.identity
    merging.restore(old.snapshot())
    out = merging.submit(touch(-1 * M, "home.view", customer="known", device="onboarder"))
    out += merging.advance(T0 + D)
    retired = named(out, "journey", "retired")
    assert len(retired) == 1 and retired[0].person_id == person_of(merging, "onboarder")


def test_an_undone_edit_brings_the_journey_back_before_it_fires() -> None:
    """Saved while retired (not yet fired) and read by the original file again: in flight."""
    old = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    old.submit(BEFORE[3])
    edited_engine = JourneyEngine(EDITED, allowed_lateness_ms=0)
    edited_engine.identity = old.identity
    edited_engine.restore(old.snapshot())
    back = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    back.restore(edited_engine.snapshot())
    (person,) = back.persons.values()
    assert [j.journey_id for j in person.journeys] and person.retired is None
    out = back.advance(T0 + 2 * D)
    assert [o.name for o in named(out, "journey")] == ["dropped_off"]


def test_state_saved_before_names_is_read_by_position() -> None:
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    engine.submit(touch(0, "cart.add", action="add", device="v1"))
    names = engine.state_names
    (raw,) = engine.snapshot().values()
    state = PersonState.from_bytes(raw, names).to_list(names)
    # the format's version, the journeys file's, then the journeys by name
    assert state[:2] == [2, CATALOG.version] and state[2][0][1:3] == ["online_purchase", "cart"]
    version1 = [[[j[0], 0, 2, *j[3:13]] for j in state[2]], *state[3:]]
    restored = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    restored.restore({"p": PersonState.from_list(version1, names).to_bytes(names)})
    out = restored.advance(T0 + 1 * D)
    assert [(o.name, o.stage, o.at) for o in named(out, "journey")] == [
        ("dropped_off", "cart", T0 + 2 * H)
    ]


def test_journeys_diff_says_what_happens_to_in_flight_journeys(tmp_path: Path) -> None:
    lines = [str(c) for c in changes(CATALOG, EDITED)]
    assert lines == [
        "online_purchase.cart: time-out 2h -> 1h: deadlines of journeys waiting at it are "
        "recomputed from their last activity",
        "online_purchase.payment: renamed checkout: journeys continue",
        "online_purchase: stages re-ordered (awareness -> consideration -> cart -> checkout "
        "becomes consideration -> awareness -> cart -> checkout): journeys keep their stage; "
        "progress follows the new order",
        "online_purchase.wishlist: stage added at position 4: journeys reach it with their next "
        "matching touchpoint",
        "support_case.diagnosis: removed: journeys waiting at it end retired (stage_removed); "
        "to keep them, name diagnosis in the renamed_from of the stage that takes them",
        "app_onboarding: removed: its in-flight journeys end retired (journey_removed); those "
        "already dropped off keep their drop-off",
        "version: not raised (3 -> 3): raise it with every edit, so that during a rolling "
        "restart a worker still on the old file keeps the journeys it does not know untouched "
        "instead of retiring them",
    ]
    assert changes(CATALOG, CATALOG) == []
    from streams.cli import main

    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(DEFAULT)
    new.write_text(yaml.safe_dump(edited(), sort_keys=False))
    result = CliRunner().invoke(main, ["journeys", "diff", str(old), str(new)])
    assert result.exit_code == 0, result.output
    assert "app_onboarding: removed: its in-flight journeys end retired" in result.output
    assert "2 of these end in-flight journeys retired" in result.output
    same = CliRunner().invoke(main, ["journeys", "diff", str(old), str(old)])
    assert same.exit_code == 0 and "no change to in-flight journeys" in same.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT.replace("timeout: 2h", "timeout: soon"))
    result = CliRunner().invoke(main, ["journeys", "diff", str(old), str(bad)])
    assert result.exit_code != 0 and f"{bad}:" in result.output and "timeout" in result.output


def test_a_former_name_must_be_unambiguous() -> None:
    data = edited()
    stages = data["journeys"][0]["stages"]
    stages[0]["renamed_from"] = ["cart"]  # cart is still a stage
    with pytest.raises(DefinitionError, match="renamed_from cart, but cart is still a stage"):
        parse_catalog(yaml.safe_dump(data), "j.yaml")
    stages[0]["renamed_from"] = ["payment"]  # checkout already continues payment
    with pytest.raises(DefinitionError, match="both renamed_from payment") as caught:
        parse_catalog(yaml.safe_dump(data, sort_keys=False), "j.yaml")
    assert caught.value.problems[0].line > 1


def test_the_version_follows_what_decides_outcomes_not_how_it_is_written() -> None:
    data = yaml.safe_load(DEFAULT)
    data["journeys"][0]["description"] = "reworded"
    data["journeys"][1]["stages"][0]["renamed_from"] = "old_research"
    reworded = JourneyCatalog.model_validate(data)
    assert [j.version for j in reworded.journeys] == [j.version for j in CATALOG.journeys]
    data["journeys"][0]["stages"][0]["timeout"] = "2d"
    changed = JourneyCatalog.model_validate(data)
    assert changed.journeys[0].version != CATALOG.journeys[0].version
    assert changed.journeys[2].version == CATALOG.journeys[2].version


def test_a_worker_with_an_older_file_keeps_what_a_newer_file_saved_untouched() -> None:
    """A rolling restart with an edited file (its version raised): a partition saved by a
    worker with the new file and read by one not yet restarted keeps the journeys that worker
    does not know, dormant, saved back as they were, until a worker with the new file reads
    them: nothing is retired by the older file."""
    data = edited()
    data["version"] = CATALOG.version + 1
    newer = JourneyCatalog.model_validate(data)
    first = JourneyEngine(newer, allowed_lateness_ms=0)
    first.submit(touch(0, "checkout.payment", action="submit", device="payer"))
    older = JourneyEngine(CATALOG, allowed_lateness_ms=0)
    older.identity = first.identity
    older.restore(first.snapshot())
    assert any("saved under a newer journeys file" in c for c in older.state_names.changes)
    assert older.advance(T0 + 5 * D) == []  # not retired, not dropped off: untouched
    back = JourneyEngine(newer, allowed_lateness_ms=0)
    back.restore(older.snapshot())
    out = back.advance(T0 + 5 * D)
    assert [(o.name, o.stage, o.at) for o in named(out, "journey")] == [
        ("dropped_off", "checkout", T0 + 30 * M)
    ]
