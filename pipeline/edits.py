"""What an edit of the journeys file does to in-flight journeys (docs/journey-engine.md,
"Editing journeys").

Saved state names journeys and stages (``pipeline.engine.StateNames``); a worker that starts
with an edited file reads it with these rules:

* a journey or stage renamed with ``renamed_from``: its journeys continue under the new name;
* stages re-ordered: journeys keep their stage (by name); progress follows the new order;
* a stage added: nothing moves; journeys reach it with their next matching touchpoint;
* a time-out (or ``resume_within``) changed: deadlines are recomputed from each journey's last
  activity with the new value (a journey already past it drops off at the new deadline);
* a stage removed: journeys waiting at it end ``retired`` (reason ``stage_removed``), unless a
  stage names it in ``renamed_from``, then they continue there;
* a journey removed: its in-flight journeys end ``retired`` (reason ``journey_removed``) at
  their last activity, not dropped off; journeys already dropped off keep their drop-off;
* a journey added: it starts with its next matching touchpoint; nothing in flight changes;
* state saved under a newer file (a higher ``version``) than the worker's: what the worker does
  not know is kept untouched (a rolling restart with an edited file).

``changes`` lists what will happen, for ``journeywatch journeys diff`` and the worker's log.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.definitions import JourneyCatalog, JourneyDefinition
from pipeline.engine import STAGE_REMOVED, StateNames


@dataclass(frozen=True)
class Change:
    """One consequence of an edit: ``journey`` (and ``stage``) as the old file names them."""

    journey: str
    stage: str | None
    what: str  # removed | renamed | added | reordered | timeout | resume_within | matching
    message: str
    retires: bool = False  # in-flight journeys end ``retired``

    def __str__(self) -> str:
        where = f"{self.journey}.{self.stage}" if self.stage else self.journey
        return f"{where}: {self.message}"


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def changes(old: JourneyCatalog, new: JourneyCatalog) -> list[Change]:
    """What a worker started with ``new`` does to journeys in flight under ``old``."""
    names = StateNames(new.journeys)
    out: list[Change] = []
    continued: set[str] = set()
    for before in old.journeys:
        index = names.journey_index.get(before.name, -1)
        if index < 0:
            out.append(
                Change(
                    before.name,
                    None,
                    "removed",
                    "removed: its in-flight journeys end retired (journey_removed); those "
                    "already dropped off keep their drop-off",
                    retires=True,
                )
            )
            continue
        after = new.journeys[index]
        continued.add(after.name)
        if after.name != before.name:
            out.append(
                Change(before.name, None, "renamed", f"renamed {after.name}: journeys continue")
            )
        out += _stage_changes(before, after, names)
    for after in new.journeys:
        if after.name not in continued:
            out.append(
                Change(after.name, None, "added", "added: starts with its next matching touchpoint")
            )
    if out and new.version <= old.version:
        out.append(
            Change(
                "version",
                None,
                "version",
                f"not raised ({old.version} -> {new.version}): raise it with every edit, so "
                "that during a rolling restart a worker still on the old file keeps the "
                "journeys it does not know untouched instead of retiring them",
            )
        )
    return out


def _stage_changes(
    before: JourneyDefinition, after: JourneyDefinition, names: StateNames
) -> list[Change]:
    out: list[Change] = []
    journey = before.name
    kept: list[str] = []  # the new names of the old stages that continue, in the old order
    for stage in before.stages:
        _, position, reason, _, _ = names.resolve(journey, stage.name)
        if reason == STAGE_REMOVED:
            out.append(
                Change(
                    journey,
                    stage.name,
                    "removed",
                    "removed: journeys waiting at it end retired (stage_removed); to keep "
                    f"them, name {stage.name} in the renamed_from of the stage that takes them",
                    retires=True,
                )
            )
            continue
        now = after.stages[position]
        kept.append(now.name)
        if now.name != stage.name:
            out.append(
                Change(journey, stage.name, "renamed", f"renamed {now.name}: journeys continue")
            )
        if now.timeout != stage.timeout:
            out.append(
                Change(
                    journey,
                    stage.name,
                    "timeout",
                    f"time-out {_duration(stage.timeout)} -> {_duration(now.timeout)}: deadlines "
                    "of journeys waiting at it are recomputed from their last activity",
                )
            )
        if now.match != stage.match:
            out.append(
                Change(
                    journey,
                    stage.name,
                    "matching",
                    "matches other touchpoints: applies to touchpoints from now on",
                )
            )
    order = [s.name for s in after.stages if s.name in kept]
    if order != kept:
        out.append(
            Change(
                journey,
                None,
                "reordered",
                f"stages re-ordered ({' -> '.join(kept)} becomes {' -> '.join(order)}): "
                "journeys keep their stage; progress follows the new order",
            )
        )
    for position, stage in enumerate(after.stages):
        if stage.name not in kept:
            out.append(
                Change(
                    journey,
                    stage.name,
                    "added",
                    f"stage added at position {position + 1}: journeys reach it with their "
                    "next matching touchpoint",
                )
            )
    if after.resume_within != before.resume_within:
        out.append(
            Change(
                journey,
                None,
                "resume_within",
                f"resume_within {_duration(before.resume_within)} -> "
                f"{_duration(after.resume_within)}: dropped-off journeys' windows recomputed",
            )
        )
    if (after.goal, after.moments_of_truth, after.first_contact_resolution) != (
        before.goal,
        before.moments_of_truth,
        before.first_contact_resolution,
    ):
        out.append(
            Change(
                journey,
                None,
                "matching",
                "goal, moments of truth or first-contact resolution changed: applies to "
                "touchpoints from now on",
            )
        )
    return out
