"""Segments: named groups of journeys by the customer's or the touchpoint's attributes.

A CX team names its segments in the journeys file (``segments:``), each a name and a rule over a
touchpoint's ``attributes`` (a customer's tier, region, store) and its channel::

    segments:
      - name: gold
        match: {attributes: {tier: [gold, platinum]}}
      - name: eu_stores
        match: {channel: [store], attributes: {region: EU}}

A **journey's segment** is decided once, by the touchpoint that starts it (its first touchpoint
by event time: the engine applies touchpoints in event-time order, so any arrival order within
the lateness gives the same segment), as the first segment of the file whose rule that
touchpoint matches; a journey whose first touchpoint matches none is in :data:`OTHER`. Every
output of the journey carries it, so entries, conversions and drop-offs of one journey are
counted in one segment. Not the name of Segment.com's source mapping (pipeline/segment.py).

Label cardinality stays bounded: at most :data:`MAX_SEGMENTS` names, plus :data:`OTHER`; a raw
attribute value never becomes a label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from pipeline.contract import Channel

MAX_SEGMENTS: Final = 20
# the label of a journey in no segment (and of outputs without a journey)
OTHER: Final = "other"
# names the journey map already gives its built-in filters (sinks/clickhouse/journey_map.py)
BUILT_IN: Final = ("identified", "anonymous")
RESERVED: Final = (OTHER, "all", "none", *BUILT_IN)

Scalar = str | int | float | bool


def _one_or_more(value: Any) -> Any:
    """``tier: gold`` is ``tier: [gold]``."""
    return [value] if isinstance(value, str | int | float | bool) else value


def attribute_text(value: Any) -> str | None:
    """An attribute's value as the rules compare it: ``true``/``false``, ``12``, ``gold``;
    None for null and anything that is not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


AllowedValues = Annotated[tuple[Scalar, ...], BeforeValidator(_one_or_more), Field(min_length=1)]


class SegmentMatch(BaseModel):
    """Every given part must match: the channel is one of ``channel``; each attribute named in
    ``attributes`` is present with one of its values (compared as text: ``12`` matches ``"12"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # at least one: an empty list would be no channel rule at all, and match every channel
    channel: Annotated[tuple[Channel, ...], Field(min_length=1)] | None = None
    attributes: dict[Annotated[str, Field(min_length=1, max_length=64)], AllowedValues] = Field(
        default_factory=dict
    )

    def texts(self) -> tuple[tuple[str, frozenset[str]], ...]:
        return tuple(
            (key, frozenset(t for v in allowed if (t := attribute_text(v)) is not None))
            for key, allowed in self.attributes.items()
        )


class SegmentDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
    description: str = ""
    match: SegmentMatch

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED:
            raise ValueError(
                f"{value!r} is reserved ({', '.join(RESERVED)}: {OTHER} is the journeys in no "
                "segment, identified and anonymous are the journey map's own filters)"
            )
        return value

    @field_validator("match")
    @classmethod
    def _not_empty(cls, value: SegmentMatch) -> SegmentMatch:
        if value.channel is None and not value.attributes:
            raise ValueError("a segment matches by channel and/or attributes: give at least one")
        return value


Segments = Annotated[tuple[SegmentDefinition, ...], Field(max_length=MAX_SEGMENTS)]


def check_segments(segments: tuple[SegmentDefinition, ...]) -> None:
    """Unique names (the loader reports it at ``segments``)."""
    names = [s.name for s in segments]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"segment names must be unique, repeated: {', '.join(duplicates)}")


class SegmentRules:
    """The segments of a journeys file, compiled for the hot path: :meth:`segment_of` is
    called once per touchpoint."""

    __slots__ = ("_rules", "names")

    def __init__(self, segments: tuple[SegmentDefinition, ...] = ()) -> None:
        self.names: tuple[str, ...] = tuple(s.name for s in segments)
        self._rules: tuple[
            tuple[str, frozenset[str] | None, tuple[tuple[str, frozenset[str]], ...]], ...
        ] = tuple(
            (
                s.name,
                frozenset(c.value for c in s.match.channel) if s.match.channel else None,
                s.match.texts(),
            )
            for s in segments
        )

    def __bool__(self) -> bool:
        return bool(self._rules)

    def segment_of(self, channel: str, attributes: Mapping[str, Any] | None) -> str | None:
        """The first segment (in the file's order) whose rule the touchpoint matches, or None."""
        for name, channels, wanted in self._rules:
            if channels is not None and channel not in channels:
                continue
            if not wanted:
                return name
            if not attributes:
                continue
            for key, allowed in wanted:  # (a loop, not all(...): once per touchpoint)
                value = attributes.get(key)
                if (value if type(value) is str else attribute_text(value)) not in allowed:
                    break
            else:
                return name
        return None

    def labels(self) -> tuple[str, ...]:
        """Every value a ``segment`` label can take: the names, then :data:`OTHER`."""
        return (*self.names, OTHER)


def segment_label(segment: str | None) -> str:
    """The bounded label of a journey's segment (None or "": :data:`OTHER`)."""
    return segment or OTHER
