"""Journey definitions: stages, goal, time-outs and moments of truth, from a versioned YAML file.

The file is validated at start-up; every problem is reported with the file, the line and
what is wrong, so an operator can fix a typo without reading a stack trace.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.actions import Actions, check_unique
from pipeline.contract import Channel, OutcomeStatus
from pipeline.segment_rules import SegmentRules, Segments, check_segments
from pipeline.sourcemap import Sources

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
M = TypeVar("M", bound=BaseModel)


def parse_duration_ms(value: Any) -> int:
    """``"30m"`` → 1 800 000. Bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return int(value * 1000)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return int(float(match[1]) * _UNIT_MS[match[2]])
    raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 15m, 2h, 7d)")


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms), Field(gt=0)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


def _one_or_more(value: Any) -> Any:
    """``renamed_from: cart`` is ``renamed_from: [cart]``."""
    return (value,) if isinstance(value, str) else value


# Earlier names of a journey or a stage: in-flight journeys saved under one of them continue
# under this one (docs/journey-engine.md, "Editing journeys").
FormerNames = Annotated[tuple[Name, ...], BeforeValidator(_one_or_more)]


def _require_unique(what: str, names: list[str]) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{what} names must be unique, repeated: {', '.join(duplicates)}")


def _check_former_names(what: str, entries: list[tuple[str, tuple[str, ...]]]) -> None:
    """A former name is not a current one, and belongs to one of them only."""
    current = {name for name, _ in entries}
    claimed: dict[str, str] = {}
    for name, former in entries:
        for old in former:
            if old in current:
                raise ValueError(
                    f"{what} {name}: renamed_from {old}, but {old} is still a {what}: "
                    f"remove it from renamed_from (its journeys stay where they are)"
                )
            if old in claimed:
                raise ValueError(
                    f"{what}s {claimed[old]} and {name} are both renamed_from {old}: "
                    f"name it under one of them"
                )
            claimed[old] = name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pattern(_Strict):
    """Matches a touchpoint: every given part must match (touchpoint is a glob)."""

    touchpoint: str = "*"
    action: str | None = None
    channel: tuple[Channel, ...] | None = None
    outcome: tuple[OutcomeStatus, ...] | None = None

    def matches(self, touchpoint: str, action: str, channel: str, outcome: str) -> bool:
        if self.action is not None and action != self.action:
            return False
        if self.channel is not None and channel not in self.channel:
            return False
        if self.outcome is not None and outcome not in self.outcome:
            return False
        return fnmatch.fnmatchcase(touchpoint, self.touchpoint)


class Stage(_Strict):
    name: Name
    match: tuple[Pattern, ...] = Field(min_length=1)
    timeout: DurationMs
    renamed_from: FormerNames = ()


class MomentOfTruth(_Strict):
    name: Name
    match: tuple[Pattern, ...] = Field(min_length=1)
    weight: float = Field(default=2.0, ge=1.0, le=10.0)


class JourneyDefinition(_Strict):
    name: Name
    description: str = ""
    stages: tuple[Stage, ...] = Field(min_length=1)
    goal: tuple[Pattern, ...] = Field(min_length=1)
    resume_within: DurationMs = 7 * 86_400_000
    first_contact_resolution: bool = False
    moments_of_truth: tuple[MomentOfTruth, ...] = ()
    renamed_from: FormerNames = ()
    _version: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _unique_stage_names(self) -> JourneyDefinition:
        _require_unique("stage", [stage.name for stage in self.stages])
        _check_former_names("stage", [(stage.name, stage.renamed_from) for stage in self.stages])
        # what decides outcomes, not how it is written (description, former names, key order)
        shape = self.model_dump(mode="json", exclude={"description", "renamed_from"})
        for stage in shape["stages"]:
            del stage["renamed_from"]
        self._version = hashlib.blake2b(
            json.dumps(shape, sort_keys=True).encode(), digest_size=6
        ).hexdigest()
        return self

    @property
    def version(self) -> str:
        """A short hash of what decides this journey's outcomes (stages, matches, time-outs,
        goal, resume_within, moments of truth, first-contact resolution): outputs carry it,
        so an analyst tells results under one definition from those under an edited one."""
        return self._version


# A session (a visit, a call, a chat) ends after this long without activity on its channel,
# measured from the end of its latest touchpoint (``occurred_at`` + ``duration_ms``).
DEFAULT_SESSION_GAP_MS: Final[dict[str, int]] = {
    "web": 30 * 60_000,
    "app": 30 * 60_000,
    "chat": 30 * 60_000,
    "email": 24 * 3_600_000,
    "social": 24 * 3_600_000,
    "call_center": 15 * 60_000,
    "store": 2 * 3_600_000,
}
_CHANNELS: Final = tuple(channel.value for channel in Channel)


def _per_channel(value: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(value) - set(_CHANNELS))
    if unknown:
        raise ValueError(
            f"unknown channel {', '.join(map(repr, unknown))} (channels: {', '.join(_CHANNELS)})"
        )
    return value


class DetectorSettings(_Strict):
    call_queue_wait: DurationMs = 300_000
    store_queue_wait: DurationMs = 600_000
    # per channel, a queue wait longer than this is a long_wait (any channel; call_center and
    # store default to call_queue_wait and store_queue_wait)
    queue_wait: dict[str, DurationMs] = Field(default_factory=dict)
    session_gap: dict[str, DurationMs] = Field(default_factory=lambda: dict(DEFAULT_SESSION_GAP_MS))
    slow_page: DurationMs = 5_000
    low_csat_at_most: int = Field(default=2, ge=1, le=4)  # CSAT 1-5
    nps_detractor_at_most: int = Field(default=6, ge=0, le=9)  # NPS 0-10
    negative_sentiment_at_most: float = Field(default=-0.3, ge=-1.0, lt=0.0)  # sentiment -1..1
    repeat_contact_within: DurationMs = 7 * 86_400_000
    channel_switch_within: DurationMs = 1_800_000
    repeated_attempts: int = Field(default=3, ge=2)
    repeated_attempts_within: DurationMs = 120_000
    churn_after: DurationMs = 60 * 86_400_000
    max_customers_per_identifier: int = Field(default=3, ge=1)
    _queue_waits: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("session_gap")
    @classmethod
    def _every_channel_has_a_gap(cls, value: dict[str, int]) -> dict[str, int]:
        """Channels not named keep their default gap."""
        return {**DEFAULT_SESSION_GAP_MS, **_per_channel(value)}

    @field_validator("queue_wait")
    @classmethod
    def _known_channels(cls, value: dict[str, int]) -> dict[str, int]:
        return _per_channel(value)

    @model_validator(mode="after")
    def _one_queue_wait_per_channel(self) -> DetectorSettings:
        for channel, legacy in (("call_center", "call_queue_wait"), ("store", "store_queue_wait")):
            if channel in self.queue_wait and legacy in self.model_fields_set:
                raise ValueError(
                    f"queue_wait.{channel} and {legacy} both set the {channel} queue wait: keep one"
                )
        self._queue_waits = {
            "call_center": self.call_queue_wait,
            "store": self.store_queue_wait,
            **self.queue_wait,
        }
        return self

    @property
    def queue_waits(self) -> dict[str, int]:
        """The long-wait threshold of each channel that has one."""
        return self._queue_waits


class JourneyCatalog(_Strict):
    """Everything in one journey definitions file."""

    version: int = Field(ge=1)
    detectors: DetectorSettings = DetectorSettings()
    journeys: tuple[JourneyDefinition, ...] = Field(min_length=1)
    # per source (a collector API key's name): rules from its events to touchpoints, and its
    # survey webhook (pipeline/sourcemap.py, docs/sources.md)
    sources: Sources = Field(default_factory=dict)
    # closed-loop actions: a webhook per customer's bad moment (pipeline/actions.py)
    actions: Actions = ()
    # named segments of journeys by the customer's or touchpoint's attributes, at most
    # MAX_SEGMENTS (pipeline/segment_rules.py, docs/segments.md)
    segments: Segments = ()
    _segment_rules: SegmentRules = PrivateAttr(default_factory=SegmentRules)

    @model_validator(mode="after")
    def _unique_journey_names(self) -> JourneyCatalog:
        _require_unique("journey", [journey.name for journey in self.journeys])
        _check_former_names("journey", [(j.name, j.renamed_from) for j in self.journeys])
        return self

    @field_validator("actions")
    @classmethod
    def _unique_action_names(cls, value: Actions) -> Actions:
        check_unique(value)
        return value

    @field_validator("segments")
    @classmethod
    def _unique_segment_names(cls, value: Segments) -> Segments:
        check_segments(value)
        return value

    @model_validator(mode="after")
    def _compile_segments(self) -> JourneyCatalog:
        self._segment_rules = SegmentRules(self.segments)
        return self

    @property
    def segment_rules(self) -> SegmentRules:
        """The segments compiled for the hot path (one call per touchpoint)."""
        return self._segment_rules


@dataclass(frozen=True)
class DefinitionProblem:
    file: str
    line: int
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.where}: {self.message}"


class DefinitionError(ValueError):
    """A YAML file (the journey definitions, an import mapping) is invalid; ``problems``
    lists each with its line."""

    def __init__(
        self, problems: list[DefinitionProblem], what: str = "journey definitions"
    ) -> None:
        self.problems = problems
        super().__init__(f"invalid {what}:\n" + "\n".join(f"  {p}" for p in problems))


def _node_at(node: yaml.Node, path: tuple[int | str, ...]) -> yaml.Node:
    """The YAML node a validation-error location points at (as deep as it exists)."""
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    node = value
                    break
            else:
                return node
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            return node
    return node


def _describe(data: Any, path: tuple[int | str, ...]) -> str:
    """A readable location: ``journeys[online_purchase].stages[cart].timeout``."""
    parts: list[str] = []
    current = data
    for part in path:
        if isinstance(part, int) and isinstance(current, list) and part < len(current):
            item = current[part]
            label = item.get("name") if isinstance(item, dict) else None
            parts[-1] += f"[{label or part}]"
            current = item
        else:
            parts.append(str(part))
            current = current.get(part) if isinstance(current, dict) else None
    return ".".join(parts) or "(top level)"


def parse_catalog(text: str, file: str = "<journeys>") -> JourneyCatalog:
    return parse_yaml_model(JourneyCatalog, text, file, "version and journeys")


def parse_yaml_model(
    model: type[M], text: str, file: str, expected: str, what: str = "journey definitions"
) -> M:
    """``text`` (YAML) validated as ``model``: a :class:`DefinitionError` names the file and
    line of every problem (``expected``: what the top-level mapping holds, for the message)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise DefinitionError(
            [DefinitionProblem(file, line, "(yaml)", str(exc).splitlines()[0])], what
        ) from exc
    if root is None or not isinstance(data, dict):
        raise DefinitionError(
            [DefinitionProblem(file, 1, "(top level)", f"expected a mapping with {expected}")],
            what,
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        errors = exc.errors(include_url=False)
        paths = [tuple(p for p in e["loc"] if isinstance(p, int | str)) for e in errors]
        for error, path in zip(errors, paths, strict=True):
            # A list whose items failed also looks "too short": report only the items.
            if error["type"] == "too_short" and any(
                len(other) > len(path) and other[: len(path)] == path for other in paths
            ):
                continue
            node = _node_at(root, path)
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(
                DefinitionProblem(file, node.start_mark.line + 1, _describe(data, path), message)
            )
        raise DefinitionError(problems, what) from exc


def load_catalog(path: Path | None = None) -> JourneyCatalog:
    """The catalog from ``path``, or the defaults shipped with journeywatch."""
    if path is None:
        text = (
            resources.files("pipeline")
            .joinpath("defaults/journeys.yaml")
            .read_text(encoding="utf-8")
        )
        return parse_catalog(text, "journeywatch/defaults/journeys.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(
            [DefinitionProblem(str(path), 0, "(file)", f"cannot read: {exc.strerror}")]
        ) from exc
    return parse_catalog(text, str(path))
