"""Import mappings: which column of an export is what, and which rows become which touchpoints,
as a YAML file instead of code (``journeywatch import --mapping FILE``, docs/feeds.md).

Pure. A mapping names the columns holding the record (a call, visit, ticket or order: the
``session_hint``), the event value the rules match, the time and the customer's identifiers;
its ``rules`` are pipeline/sourcemap.py's (the first whose ``event`` and ``where`` match the
row sets ``touchpoint``, ``action``, ``outcome``, ``outcome_reason``, ``channel`` and reads
CSAT, NPS, revenue and a wait from the columns it names), applied to the row with the column
names and the mapping's ``names`` as properties. The two shipped kinds, ``--kind
contact-center`` and ``--kind store``, are the mappings in pipeline/defaults/import-*.yaml.

A row becomes one touchpoint, or a :class:`RowError` naming the column (as the export names
it) and the problem. Event ids are derived from the record, the event value, the time and the
``id_columns``, so importing the same file twice produces the same events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from pipeline.contract import Channel
from pipeline.definitions import DefinitionError, DefinitionProblem, parse_yaml_model
from pipeline.feeds import BadRow, RowError, cell, derived_event_id
from pipeline.pii import hash_email, hash_phone
from pipeline.segment import touchpoint_name
from pipeline.sourcemap import Path as PropertyPath
from pipeline.sourcemap import Rule, apply_rule

DEFAULT_ACTION: Final = "track"  # a rule that names no action (as a Segment track call)
SHIPPED: Final = {"contact-center": "import-contact-center.yaml", "store": "import-store.yaml"}
WHAT: Final = "import mapping"

Column = Annotated[str, Field(min_length=1, max_length=256)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
_OFFSET = re.compile(r"^([+-])(\d\d):?(\d\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImportRule(Rule):
    """A source-mapping rule (pipeline/sourcemap.py), plus what only exports need."""

    # a return or refund whose export gives a positive amount: the revenue becomes negative
    revenue_sign: Literal["as_is", "negative"] = "as_is"


class Columns(_Strict):
    """The export's column (its header, or the key in JSON Lines) for each role."""

    record: Column  # the call, visit, ticket or order a row belongs to: session_hint, event id
    event: Column  # the value the rules' ``event`` matches
    timestamp: Column
    customer_id: Column | None = None
    loyalty_id: Column | None = None
    email: Column | None = None  # hashed (JW_PII_HASH_KEY), never produced raw
    phone: Column | None = None  # hashed


class RowFields(_Strict):
    """Columns read on every row, unless its rule names its own."""

    csat: PropertyPath | None = None
    nps: PropertyPath | None = None
    revenue: PropertyPath | None = None
    currency: PropertyPath | None = None
    wait: PropertyPath | None = None
    wait_unit: Literal["ms", "s"] = "s"


class ImportMapping(_Strict):
    """One export's mapping file."""

    version: Literal[1]
    source: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)  # the events' source
    channel: Channel  # unless a rule sets one
    id_prefix: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=16)
    match_case: bool = True  # false: event values and ``where`` values compared in lower case
    delimiter: str = Field(default=",", min_length=1, max_length=1)  # CSV only
    time_format: str | None = Field(default=None, max_length=64)  # strptime; default ISO 8601
    time_zone: str | None = Field(default=None, max_length=64)  # for times without one
    columns: Columns
    names: dict[Name, Column] = Field(default_factory=dict)  # name the rules use → column
    attributes: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = ()
    id_columns: tuple[Column, ...] = ()  # more columns that tell a row's events apart
    fields: RowFields = RowFields()
    currency_required: bool = False  # true: an amount without a currency is refused
    rules: tuple[ImportRule, ...] = Field(min_length=1)
    _rules: tuple[ImportRule, ...] = PrivateAttr(default=())
    _zone: tzinfo | None = PrivateAttr(default=None)
    _file: str = PrivateAttr(default="")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            _zone(value)
        return value

    @model_validator(mode="after")
    def _prepare(self) -> ImportMapping:
        defaults = self.fields.model_dump(exclude_none=True, exclude={"wait_unit"})
        rules = []
        for rule in self.rules:
            data = rule.model_dump(exclude_unset=True)
            for name, column in defaults.items():
                data.setdefault(name, column)
            if "wait_unit" not in data and "wait" not in rule.model_fields_set:
                data["wait_unit"] = self.fields.wait_unit
            if not self.match_case:
                data["event"] = rule.event.lower()
                data["where"] = {
                    path: [v.lower() if isinstance(v, str) else v for v in values]
                    for path, values in rule.where.items()
                }
            if self.currency_required and "revenue" in data and "currency" not in data:
                raise ValueError(f"currency_required: rule {rule.event!r} reads no currency")
            rules.append(ImportRule.model_validate(data))
        self._rules = tuple(rules)
        self._zone = _zone(self.time_zone) if self.time_zone else None
        return self

    # --- one row ----------------------------------------------------------------------

    def column_of(self, name: str) -> str:
        """The export's column a property name reads (a ``names`` alias, or the column)."""
        return self.names.get(name, name)

    def required_columns(self) -> tuple[str, ...]:
        """The columns a CSV header must have: the record, event and time, and every column
        ``names`` names (a name is given to a column of this export: a missing one is a typo,
        which would otherwise read as empty cells)."""
        columns = (self.columns.record, self.columns.event, self.columns.timestamp)
        return tuple(dict.fromkeys((*columns, *self.names.values())))

    def describe(self) -> str:
        """Where the mapping is, for messages: ``the columns of FILE``."""
        return f"the columns of {self._file or 'the mapping'}"

    def map_row(
        self,
        row: Mapping[str, Any],
        pii_key: bytes,
        country_code: str = "",
        known: dict[str, dict[str, str]] | None = None,
    ) -> dict[str, Any] | RowError:
        """One export row as a contract-shaped event, or why not. Exports often name the
        customer on a record's first row only: with ``known`` (record → the identifiers seen
        earlier in the same import), later rows inherit them."""
        try:
            return self._map(row, pii_key, country_code, known)
        except BadRow as bad:
            return bad.error

    def _map(
        self,
        row: Mapping[str, Any],
        pii_key: bytes,
        country_code: str,
        known: dict[str, dict[str, str]] | None,
    ) -> dict[str, Any]:
        columns = self.columns
        record = cell(row, columns.record)
        raw_event = cell(row, columns.event)
        assert record is not None and raw_event is not None
        # An empty cell is no value (a CSV row has every column, most of them empty)
        properties = {
            k: None if isinstance(v, str) and not v.strip() else v for k, v in row.items()
        }
        for name, column in self.names.items():
            properties[name] = properties.get(column)
        value = raw_event if self.match_case else raw_event.lower()
        compared = (
            properties
            if self.match_case
            else {k: v.lower() if isinstance(v, str) else v for k, v in properties.items()}
        )
        rule = next((r for r in self._rules if r.matches(value, compared)), None)
        if rule is None:
            raise BadRow(columns.event, self._no_rule(raw_event))
        at = self._time(row)
        extra = [("" if row.get(c) is None else str(row.get(c))) for c in self.id_columns]
        event: dict[str, Any] = {
            "event_id": derived_event_id(self.id_prefix, record, value, at.isoformat(), *extra),
            "occurred_at": at.isoformat(),
            "channel": self.channel.value,
            "touchpoint": rule.touchpoint or touchpoint_name(raw_event),
            "action": rule.action or DEFAULT_ACTION,
            "session_hint": record,
            "source": self.source,
            **self._identity_of_record(row, record, pii_key, country_code, known),
        }
        if not event["touchpoint"]:
            raise BadRow(columns.event, f"no touchpoint name can be made of {raw_event!r}")
        error = apply_rule(rule, properties, event, "row")
        if error is not None:
            raise BadRow(self.column_of(error.field.removeprefix("row.")), error.detail)
        if "revenue" in event:
            self._check_revenue(rule, properties, event)
        attributes = {
            name: text for name in self.attributes if (text := cell(properties, name, False))
        }
        if attributes:
            event["attributes"] = attributes
        return event

    def _no_rule(self, raw_event: str) -> str:
        exact = dict.fromkeys(r.event for r in self.rules if not any(c in r.event for c in "*?["))
        known = f"is not one of {', '.join(exact)}" if exact else "matches no rule"
        return f"{raw_event!r} {known} (rules of {self._file or 'the mapping'})"

    def _check_revenue(
        self, rule: ImportRule, properties: Mapping[str, Any], event: dict[str, Any]
    ) -> None:
        currency = rule.currency
        if self.currency_required and currency and cell(properties, currency, False) is None:
            raise BadRow(self.column_of(currency), "is required with an amount")
        if rule.revenue_sign == "negative":
            event["revenue"] = str(-abs(Decimal(event["revenue"])))

    def _time(self, row: Mapping[str, Any]) -> datetime:
        column = self.columns.timestamp
        raw = cell(row, column)
        assert raw is not None
        try:
            if self.time_format:
                value = datetime.strptime(raw, self.time_format)
            else:
                value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            form = f"the time_format {self.time_format!r}" if self.time_format else "ISO 8601"
            raise BadRow(column, f"{raw!r} is not an {form} time") from None
        if value.tzinfo is None:
            if self._zone is None:
                raise BadRow(column, f"{raw!r} has no time zone (add Z or +01:00, or time_zone)")
            value = value.replace(tzinfo=self._zone)
        return value.astimezone(UTC)

    def _identity_of_record(
        self,
        row: Mapping[str, Any],
        record: str,
        key: bytes,
        country_code: str,
        known: dict[str, dict[str, str]] | None,
    ) -> dict[str, str]:
        columns = self.columns
        ids: dict[str, str] = {}
        for name in ("customer_id", "loyalty_id"):
            column = getattr(columns, name)
            if column and (value := cell(row, column, False)):
                ids[name] = value
        if columns.email and (email := cell(row, columns.email, False)):
            ids["email_hash"] = hash_email(email, key)
        if columns.phone and (phone := cell(row, columns.phone, False)):
            ids["phone_hash"] = hash_phone(phone, key, country_code)
        if ids:
            if known is not None:
                known[record] = ids
            return ids
        if known is not None and record in known:
            return known[record]
        named = [
            c for c in (columns.customer_id, columns.loyalty_id, columns.email, columns.phone) if c
        ]
        give = ", ".join(named[:-1]) + f" or {named[-1]}" if len(named) > 1 else "".join(named)
        raise BadRow("", f"no identifier: give {give}" if named else "no identifier column mapped")


def _zone(name: str) -> tzinfo:
    """``UTC``, an offset (``+01:00``) or an IANA zone (``Europe/London``)."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    offset = _OFFSET.match(name)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not UTC, an offset like +01:00 or a zone name") from None


def parse_mapping(text: str, file: str = "<mapping>") -> ImportMapping:
    """An import mapping from YAML ``text``: a :class:`DefinitionError` names the file and
    line of every problem."""
    mapping = parse_yaml_model(ImportMapping, text, file, "version, columns and rules", WHAT)
    mapping._file = file
    return mapping


def load_mapping(path: Path) -> ImportMapping:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        problem = DefinitionProblem(str(path), 0, "(file)", f"cannot read: {exc}")
        raise DefinitionError([problem], WHAT) from exc
    return parse_mapping(text, str(path))


@cache
def shipped_mapping(kind: str) -> ImportMapping:
    """The mapping of a shipped export kind (``contact-center``, ``store``)."""
    name = SHIPPED[kind]
    text = resources.files("pipeline").joinpath(f"defaults/{name}").read_text(encoding="utf-8")
    return parse_mapping(text, f"journeywatch/defaults/{name}")


def map_call_leg(
    row: Mapping[str, Any],
    pii_key: bytes,
    country_code: str = "",
    known: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any] | RowError:
    """One contact-centre call leg (``--kind contact-center``)."""
    return shipped_mapping("contact-center").map_row(row, pii_key, country_code, known)


def map_store_row(
    row: Mapping[str, Any],
    pii_key: bytes,
    country_code: str = "",
    known: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any] | RowError:
    """One store export row (``--kind store``)."""
    return shipped_mapping("store").map_row(row, pii_key, country_code, known)
