"""A mapping, not code, from a source's events to touchpoints: the ``sources:`` section of the
journeys file.

Pure. Per source (the collector API key's name, the events' ``source``):

* ``rules``: the first rule whose ``event`` (an exact name or a glob) and ``where`` (property
  values) match an event sets its ``touchpoint``, ``action``, ``outcome``, ``outcome_reason``,
  ``channel``, and reads CSAT, NPS, revenue and a wait from the properties it names. Used by
  the Segment API (``track``) and the Snowplow tracker protocol (structured and
  self-describing events); an event no rule matches keeps its default name
  (``Checkout Payment Submitted`` → ``checkout.payment_submitted``) and is reported as
  unmapped, so the team sees what to map.
* ``webhook``: where a survey tool's JSON body holds the score, the respondent, the time and
  the response id (``POST /v1/webhooks/<source>``, ``survey_event``), and how its signature is
  checked.

The reference is docs/sources.md.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from pipeline.collect import ItemError
from pipeline.contract import Channel, OutcomeStatus

MAX_UNMAPPED_NAMES: Final = 100  # distinct unmapped event names counted per source, then "other"
UNMAPPED_OTHER: Final = "other"
MAX_NAME_LABEL: Final = 100  # an event name as a metric label is cut to this many characters
MAX_ID_CHARS: Final = 128
_MAX_EPOCH_S: Final = 253_402_300_799  # 9999-12-31T23:59:59Z

# A path into a JSON document: names and list indices separated by dots, e.g.
# ``event_data.person.email`` or ``answers.0.score`` (an optional leading ``$.`` is ignored).
_PATH = re.compile(r"^(\$\.)?[^.\s]+(\.[^.\s]+)*$")
Path = Annotated[str, Field(pattern=_PATH.pattern, max_length=256)]
TouchpointName = Annotated[
    str, Field(max_length=128, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
]
Slug = Annotated[str, Field(max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
Scalar = str | int | float | bool | None


def _one_or_more(value: Any) -> Any:
    """``where: {plan: gold}`` is ``where: {plan: [gold]}``."""
    return value if isinstance(value, list | tuple) else (value,)


Expected = Annotated[tuple[Scalar, ...], BeforeValidator(_one_or_more), Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """One rule: what an event becomes when its name and properties match."""

    event: str = Field(min_length=1, max_length=256)  # exact, or a glob (fnmatch, case-sensitive)
    where: dict[Path, Expected] = Field(default_factory=dict)  # property path → value(s)
    touchpoint: TouchpointName | None = None
    action: Slug | None = None
    outcome: OutcomeStatus | None = None
    outcome_reason: Slug | None = None
    channel: Channel | None = None
    csat: Path | None = None  # the property holding a CSAT score (1-5)
    nps: Path | None = None  # the property holding an NPS score (0-10)
    revenue: Path | None = None  # the property holding an amount
    currency: Path | None = None  # the property holding its ISO 4217 code (default: USD)
    wait: Path | None = None  # the property holding a queue wait ...
    wait_unit: Literal["ms", "s"] = "s"  # ... in this unit
    _where: tuple[tuple[str, frozenset[str]], ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _compare_as_text(self) -> Rule:
        self._where = tuple(
            (path, frozenset(_norm(e) for e in expected)) for path, expected in self.where.items()
        )
        return self

    def matches(self, name: str, properties: Mapping[str, Any]) -> bool:
        if name != self.event and not fnmatch.fnmatchcase(name, self.event):
            return False
        for path, expected in self._where:
            found, value = lookup(properties, path)
            if not found or _norm(value) not in expected:
                return False
        return True


class Signature(_Strict):
    """How a webhook's requests are signed: HMAC-SHA256 of the body, in a header."""

    header: str = Field(pattern=r"^[A-Za-z0-9-]+$", max_length=64)
    secret: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)  # a JW_WEBHOOK_SECRETS name
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field(default="", max_length=32)  # e.g. "sha256=" before the digest


class Webhook(_Strict):
    """Where a survey response's fields are in the JSON a tool posts."""

    kind: Literal["csat", "nps"]
    score: Path
    email: Path | None = None
    customer_id: Path | None = None
    occurred_at: Path | None = None  # ISO 8601 or seconds (or milliseconds) since the epoch
    response_id: Path | None = None  # → event_id; without it, a hash of the body
    touchpoint: TouchpointName | None = None  # default survey.<kind>
    channel: Channel = Channel.EMAIL
    signature: Signature | None = None

    @model_validator(mode="after")
    def _names_the_respondent(self) -> Webhook:
        if self.email is None and self.customer_id is None:
            raise ValueError("a webhook needs email or customer_id (where the respondent is)")
        return self


class SourceMapping(_Strict):
    """What journeywatch makes of one source's events."""

    rules: tuple[Rule, ...] = ()
    webhook: Webhook | None = None


SourceName = Annotated[str, Field(min_length=1, max_length=64)]
Sources = dict[SourceName, SourceMapping]


def _norm(value: Any) -> str:
    """A value as compared in ``where``: trackers send numbers and booleans as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def lookup(document: Any, path: str) -> tuple[bool, Any]:
    """The value at ``path`` (``a.b.0.c``) in ``document``: (found, value)."""
    current = document
    for part in path.removeprefix("$.").split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def find_rule(mapping: SourceMapping | None, name: str, properties: Any) -> Rule | None:
    """The first rule of ``mapping`` that matches the event ``name`` with ``properties``."""
    if mapping is None or not isinstance(properties, Mapping):
        return None
    for rule in mapping.rules:
        if rule.matches(name, properties):
            return rule
    return None


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _score(value: Any, field: str, low: int, high: int) -> int | ItemError:
    number = _number(value)
    if number is None or number != number.to_integral_value() or not low <= number <= high:
        return ItemError(-1, "invalid_field", field, f"must be a whole number from {low} to {high}")
    return int(number)


def apply_rule(
    rule: Rule, properties: Mapping[str, Any], event: dict[str, Any], where: str = "properties"
) -> ItemError | None:
    """``event`` (a contract-shaped dict, already named by default) as ``rule`` says; an error
    names the property (under ``where``) whose value cannot be used."""
    for name in ("touchpoint", "action", "outcome_reason"):
        value = getattr(rule, name)
        if value is not None:
            event[name] = value
    if rule.outcome is not None:
        event["outcome"] = rule.outcome.value
    if rule.channel is not None:
        event["channel"] = rule.channel.value
    for name, low, high in (("csat", 1, 5), ("nps", 0, 10)):
        path = getattr(rule, name)
        found, value = lookup(properties, path) if path else (False, None)
        if found and value is not None:
            score = _score(value, f"{where}.{path}", low, high)
            if isinstance(score, ItemError):
                return score
            event[name] = score
    if rule.wait is not None:
        found, value = lookup(properties, rule.wait)
        if found and value is not None:
            number = _number(value)
            if number is None or number < 0:
                return ItemError(
                    -1, "invalid_field", f"{where}.{rule.wait}", "must be a number of seconds"
                )
            event["wait_ms"] = int(number * (1000 if rule.wait_unit == "s" else 1))
    if rule.revenue is not None:
        return _revenue(rule, properties, event, where)
    return None


def _revenue(
    rule: Rule, properties: Mapping[str, Any], event: dict[str, Any], where: str
) -> ItemError | None:
    assert rule.revenue is not None
    found, value = lookup(properties, rule.revenue)
    if not found or value is None:
        return None
    number = _number(value)
    if number is None or abs(number) >= Decimal(10) ** 14:
        return ItemError(-1, "invalid_field", f"{where}.{rule.revenue}", "must be an amount")
    event["revenue"] = str(number.quantize(Decimal("0.0001")))
    currency: Any = "USD"
    if rule.currency is not None:
        found, value = lookup(properties, rule.currency)
        currency = value if found and value is not None else "USD"
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{3}", currency):
        field = f"{where}.{rule.currency}"
        return ItemError(-1, "invalid_field", field, "must be an ISO 4217 code")
    event["currency"] = currency.upper()
    return None


def map_named(
    mapping: SourceMapping | None,
    name: str,
    properties: Any,
    event: dict[str, Any],
    unmapped: list[str] | None,
    where: str = "properties",
) -> ItemError | None:
    """The rules of a source applied to one named event (``event`` already carries the default
    mapping): the first matching rule changes it; with none, ``name`` is added to
    ``unmapped``. The one entry point the Segment and Snowplow mappings share."""
    rule = find_rule(mapping, name, properties)
    if rule is None:
        if unmapped is not None:
            unmapped.append(name)
        return None
    return apply_rule(rule, properties, event, where)


class UnmappedNames:
    """Bounded metric labels for unmapped event names: the first ``limit`` distinct names of
    each source are their own label (cut to 100 characters), every later one is ``other``."""

    def __init__(self, limit: int = MAX_UNMAPPED_NAMES) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def label(self, source: str, name: str) -> str:
        name = name[:MAX_NAME_LABEL]
        seen = self._seen.setdefault(source, set())
        if name in seen:
            return name
        if len(seen) < self.limit:
            seen.add(name)
            return name
        return UNMAPPED_OTHER


# --- survey webhooks --------------------------------------------------------------------


_TIME_FORMS: Final = "must be an ISO 8601 time or seconds since the epoch"


def _time(value: Any, field: str) -> datetime | ItemError:
    """ISO 8601 (no zone: UTC), or seconds since the epoch (milliseconds when that large)."""
    if isinstance(value, str) and _number(value) is None:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return ItemError(-1, "invalid_field", field, _TIME_FORMS)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    number = _number(value)
    if number is None:
        return ItemError(-1, "invalid_field", field, _TIME_FORMS)
    seconds = number / 1000 if abs(number) > _MAX_EPOCH_S else number
    if not 0 <= seconds <= _MAX_EPOCH_S:
        return ItemError(-1, "invalid_field", field, "out of range")
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(seconds))


def _text(document: Any, path: str) -> str | ItemError | None:
    found, value = lookup(document, path)
    if not found or value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ItemError(-1, "invalid_field", path, "must be a string")
    return str(value).strip() or None


def survey_event(
    webhook: Webhook, document: Any, body: bytes, received_at: datetime
) -> dict[str, Any] | ItemError:
    """A survey tool's JSON ``document`` (``body``: its bytes) as a contract-shaped dict for
    ``prepare_event`` (a raw ``email`` included: it hashes it), or why it is refused, naming
    the JSON path."""
    if not isinstance(document, Mapping):
        return ItemError(0, "not_an_object", "", "the body must be a JSON object")
    found, raw_score = lookup(document, webhook.score)
    if not found or raw_score is None:
        return ItemError(0, "missing_field", webhook.score, "the response has no score there")
    low, high = (1, 5) if webhook.kind == "csat" else (0, 10)
    score = _score(raw_score, webhook.score, low, high)
    if isinstance(score, ItemError):
        return ItemError(0, score.reason, score.field, score.detail)
    event: dict[str, Any] = {
        "touchpoint": webhook.touchpoint or f"survey.{webhook.kind}",
        "action": "respond",
        "channel": webhook.channel.value,
        webhook.kind: score,
    }
    for path, into in ((webhook.email, "email"), (webhook.customer_id, "customer_id")):
        value = _text(document, path) if path else None
        if isinstance(value, ItemError):
            return ItemError(0, value.reason, value.field, value.detail)
        if value is not None:
            if into == "customer_id" and len(value) > MAX_ID_CHARS:
                return ItemError(0, "invalid_field", str(path), "must be at most 128 characters")
            event[into] = value
    if "email" not in event and "customer_id" not in event:
        where = " or ".join(p for p in (webhook.email, webhook.customer_id) if p)
        return ItemError(0, "missing_identifier", where, "the response names no respondent")
    event["occurred_at"] = received_at
    if webhook.occurred_at is not None:
        found, value = lookup(document, webhook.occurred_at)
        if found and value is not None:
            when = _time(value, webhook.occurred_at)
            if isinstance(when, ItemError):
                return ItemError(0, when.reason, when.field, when.detail)
            event["occurred_at"] = when
    if webhook.response_id is None:
        event["event_id"] = "wh-" + hashlib.sha256(body).hexdigest()[:32]
        return event
    response_id = _text(document, webhook.response_id)
    if isinstance(response_id, ItemError) or response_id is None:
        return ItemError(0, "missing_field", webhook.response_id, "the response has no id there")
    if len(response_id) > MAX_ID_CHARS:
        return ItemError(0, "invalid_field", webhook.response_id, "must be at most 128 characters")
    event["event_id"] = response_id
    return event


def signature_valid(
    signature: Signature, secret: bytes, body: bytes, presented: str | None
) -> bool:
    """Whether ``presented`` (the signature header's value) is the HMAC-SHA256 of ``body``
    under ``secret``, as ``signature`` encodes it; compared in constant time."""
    if presented is None:
        return False
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    expected = digest.hex() if signature.encoding == "hex" else base64.b64encode(digest).decode()
    text = presented.strip()
    if signature.prefix and text.startswith(signature.prefix):
        text = text[len(signature.prefix) :]
    if signature.encoding == "hex":
        text = text.lower()
    try:
        given = text.encode("ascii")
    except UnicodeError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), given)
