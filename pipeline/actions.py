"""Closed-loop actions: the ``actions:`` section of the journeys file, and the pure rules of it.

A rule says *when* (one trigger: a negative-moment kind, a moment of truth failed, a drop-off at
a stage, a peak-end score, CSAT or NPS below a value; optionally only in some journeys), *for
whom* (identified customers by default; optionally a minimum customer value), *what* (an HTTP
webhook: URL, headers, a templated JSON body) and *how often* (at most one action per customer
per rule per period). The actions agent (streams/actions.py) does the I/O; everything here is
plain functions over plain data: no clock, no network, no environment.

Secrets never live in the file: a header value ``{secret: NAME}`` names an entry of the
``JW_ACTION_SECRETS`` setting, resolved by the agent at start-up (``resolve_headers``).

The reference is docs/actions.md.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# A placeholder in a body string: {person_id}, {detail.reason}; {{ and }} are literal braces.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")
FIELDS: Final = (
    "rule",
    "type",
    "name",
    "output_id",
    "person_id",
    "customer_id",
    "journey",
    "journey_id",
    "stage",
    "channel",
    "touchpoint",
    "event_id",
    "value",
    "at",
    "at_iso",
)
TRIGGERS: Final = (
    "negative_moment",
    "moment_of_truth_failed",
    "dropped_off",
    "score_below",
    "csat_below",
    "nps_below",
)


def _duration_ms(value: Any) -> Any:
    """``"1d"`` → 86 400 000; bare numbers are seconds (as the journeys' time-outs)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return int(value * 1000)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return int(float(match[1]) * _UNIT_MS[match[2]])
    raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 15m, 2h, 7d)")


def _one_or_more(value: Any) -> Any:
    """``negative_moment: error`` is ``negative_moment: [error]``."""
    return (value,) if isinstance(value, str) else value


DurationMs = Annotated[int, BeforeValidator(_duration_ms), Field(gt=0)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
Glob = Annotated[str, Field(min_length=1, max_length=128)]
Globs = Annotated[tuple[Glob, ...], BeforeValidator(_one_or_more), Field(min_length=1)]
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$", max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(_Strict):
    """The trigger: exactly one of the trigger fields, optionally narrowed to journeys."""

    negative_moment: Globs | None = None  # kinds: error, call_abandoned, low_csat, …
    moment_of_truth_failed: Globs | None = None  # moment-of-truth names
    dropped_off: Globs | None = None  # stage names
    score_below: float | None = Field(default=None, gt=0, le=100)  # peak-end score 0-100
    csat_below: float | None = Field(default=None, gt=1, le=5)  # CSAT 1-5
    nps_below: float | None = Field(default=None, gt=0, le=10)  # NPS 0-10
    journey: Globs | None = None  # only outputs of these journeys

    @model_validator(mode="after")
    def _one_trigger(self) -> When:
        given = [name for name in TRIGGERS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one trigger of {', '.join(TRIGGERS)}"
                + (f" (given: {', '.join(given)})" if given else "")
            )
        return self

    @property
    def trigger(self) -> str:
        return next(name for name in TRIGGERS if getattr(self, name) is not None)


class Audience(_Strict):
    """For whom: identified customers (``c:`` persons) unless ``identified: false``; with
    ``min_value``, only customers whose value so far (their revenue in ``currency``, from the
    engine's ``ltv_increment`` outputs the agent has seen) reaches it."""

    identified: bool = True
    min_value: float | None = Field(default=None, ge=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")


class Secret(_Strict):
    """A header value from ``JW_ACTION_SECRETS[secret]``, after ``prefix`` (e.g. "Bearer ")."""

    secret: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    prefix: str = Field(default="", max_length=32)


_URL = re.compile(r"^https?://[^\s{}]+$")


def _url(value: Any) -> Any:
    """An http(s) URL, or ``{secret: NAME}``: one clear message for anything else."""
    if isinstance(value, str) and _URL.match(value) and len(value) <= 2048:
        return value
    if isinstance(value, dict) and set(value) <= {"secret", "prefix"} and "secret" in value:
        return Secret.model_validate(value)
    raise ValueError(f"not an http(s) URL or {{secret: NAME}}: {str(value)[:80]!r}")


class Webhook(_Strict):
    # a Secret: the whole URL from JW_ACTION_SECRETS (a chat's incoming webhook carries its key
    # in the path: https://hooks.slack.com/services/…)
    url: Annotated[str | Secret, BeforeValidator(_url)]
    headers: dict[HeaderName, str | Secret] = Field(default_factory=dict)
    body: Any = Field(default_factory=dict)  # JSON; strings may hold {placeholders}
    timeout: DurationMs = 5_000

    @model_validator(mode="after")
    def _known_placeholders(self) -> Webhook:
        for text in _strings(self.body):
            for match in _PLACEHOLDER.finditer(text):
                field = match[1]
                if field is None or field.startswith("detail."):
                    continue
                if field not in FIELDS:
                    raise ValueError(
                        f"body: unknown placeholder {{{field}}} (fields: "
                        f"{', '.join(FIELDS)}, detail.<name>)"
                    )
        reserved = {name.lower() for name in self.headers} & {"idempotency-key", "content-type"}
        if reserved:
            raise ValueError(f"headers: {', '.join(sorted(reserved))} is set by journeywatch")
        return self


class Action(_Strict):
    name: Name
    description: str = ""
    when: When
    for_: Audience = Field(default_factory=Audience, alias="for")
    webhook: Webhook
    at_most_once_per: DurationMs = 86_400_000  # per customer and rule


Actions = tuple[Action, ...]


def check_unique(actions: Actions) -> None:
    names = [action.name for action in actions]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"action names must be unique, repeated: {', '.join(repeated)}")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    return []


def _any(globs: tuple[str, ...], name: Any) -> bool:
    return isinstance(name, str) and any(fnmatch.fnmatchcase(name, g) for g in globs)


def _below(value: Any, limit: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value < limit


def triggered(when: When, output: Mapping[str, Any]) -> bool:
    """Whether the journey output (as its topic's JSON object) is this rule's trigger."""
    if when.journey is not None and not _any(when.journey, output.get("journey")):
        return False
    kind, name = output.get("type"), output.get("name")
    if when.negative_moment is not None:
        return kind == "negative_moment" and _any(when.negative_moment, name)
    if when.moment_of_truth_failed is not None:
        detail = output.get("detail") or {}
        return (
            kind == "moment_of_truth"
            and not detail.get("passed", True)
            and _any(when.moment_of_truth_failed, name)
        )
    if when.dropped_off is not None:
        return (
            kind == "journey"
            and name == "dropped_off"
            and _any(when.dropped_off, output.get("stage"))
        )
    if when.score_below is not None:
        return (
            kind == "score" and name == "peak_end" and _below(output.get("value"), when.score_below)
        )
    if when.csat_below is not None:
        return kind == "kpi" and name == "csat" and _below(output.get("value"), when.csat_below)
    assert when.nps_below is not None
    return kind == "kpi" and name == "nps" and _below(output.get("value"), when.nps_below)


def identified(person_id: Any) -> bool:
    """A known customer (``c:<customer id>``), not an anonymous visitor."""
    return isinstance(person_id, str) and person_id.startswith("c:")


def matching(actions: Actions, output: Mapping[str, Any]) -> list[Action]:
    """The rules ``output`` triggers, its audience's identity checked (value: ``value_allows``)."""
    person = output.get("person_id")
    return [
        action
        for action in actions
        if triggered(action.when, output) and (identified(person) or not action.for_.identified)
    ]


def is_value(output: Mapping[str, Any]) -> bool:
    """An output that adds to a customer's value (the audience's ``min_value``)."""
    return (
        output.get("type") == "kpi"
        and output.get("name") == "ltv_increment"
        and identified(output.get("person_id"))
    )


def add_value(values: dict[str, float], output: Mapping[str, Any]) -> dict[str, float]:
    """A customer's value per currency with ``output`` (an ``ltv_increment``) added."""
    currency = str((output.get("detail") or {}).get("currency") or "USD")
    amount = output.get("value")
    if not isinstance(amount, int | float) or isinstance(amount, bool):
        return values
    return {**values, currency: round(values.get(currency, 0.0) + float(amount), 6)}


def value_allows(action: Action, values: Mapping[str, float]) -> bool:
    audience = action.for_
    return audience.min_value is None or values.get(audience.currency, 0.0) >= audience.min_value


def limited(action: Action, last_at: int | None, at: int) -> bool:
    """Whether a trigger at ``at`` (event time, ms) falls within ``at_most_once_per`` of the
    customer's last action of this rule (at ``last_at``): then no action. Symmetric, so the
    order in which one customer's triggers reach the agent does not matter for the spacing."""
    return last_at is not None and abs(at - last_at) < action.at_most_once_per


def idempotency_key(output_id: str, rule: str) -> str:
    """One delivery per trigger and rule: the receiver may deduplicate on it too."""
    return f"{output_id}:{rule}"


def fields_of(rule: str, output: Mapping[str, Any]) -> dict[str, Any]:
    """The values a body's placeholders name."""
    person = output.get("person_id")
    at = output.get("at")
    fields = {name: output.get(name) for name in FIELDS}
    fields["rule"] = rule
    fields["customer_id"] = person[2:] if isinstance(person, str) and identified(person) else None
    fields["at_iso"] = (
        datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="milliseconds")
        if isinstance(at, int)
        else None
    )
    return fields


def _lookup(field: str, fields: Mapping[str, Any], detail: Mapping[str, Any]) -> Any:
    if field.startswith("detail."):
        current: Any = detail
        for part in field.split(".")[1:]:
            current = current.get(part) if isinstance(current, Mapping) else None
        return current
    return fields.get(field)


def _render_string(text: str, fields: Mapping[str, Any], detail: Mapping[str, Any]) -> Any:
    whole = _PLACEHOLDER.fullmatch(text)
    if whole and whole[1] is not None:  # "{value}": the value itself, with its JSON type
        return _lookup(whole[1], fields, detail)

    def replace(match: re.Match[str]) -> str:
        if match[1] is None:
            return match[0][0]  # {{ → {, }} → }
        value = _lookup(match[1], fields, detail)
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(replace, text)


def _render(value: Any, fields: Mapping[str, Any], detail: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return _render_string(value, fields, detail)
    if isinstance(value, Mapping):
        return {
            str(_render_string(str(k), fields, detail)): _render(v, fields, detail)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_render(item, fields, detail) for item in value]
    return value


def render_body(action: Action, output: Mapping[str, Any]) -> Any:
    """The webhook's JSON body for ``output``: every ``{field}`` replaced (a string that is one
    placeholder becomes the value with its own type: a number stays a number, a missing value
    is null; inside text a missing value is empty)."""
    detail = output.get("detail") or {}
    return _render(action.webhook.body, fields_of(action.name, output), detail)


class MissingSecret(ValueError):
    pass


def secrets_needed(actions: Actions) -> set[str]:
    return {
        value.secret
        for action in actions
        for value in (*action.webhook.headers.values(), action.webhook.url)
        if isinstance(value, Secret)
    }


def resolve_url(action: Action, secrets: Mapping[str, str]) -> str:
    """The webhook's URL, from ``JW_ACTION_SECRETS`` when the file names a secret; raises
    ``MissingSecret`` (naming the entry, never a value) when it is missing or no http(s) URL."""
    url = action.webhook.url
    if not isinstance(url, Secret):
        return url
    value = secrets.get(url.secret)
    if value is None or not re.match(r"^https?://[^\s]+$", value):
        raise MissingSecret(
            f"action {action.name}: url names secret {url.secret!r}, which JW_ACTION_SECRETS "
            + ("does not hold" if value is None else "does not hold as an http(s) URL")
        )
    return url.prefix + value if url.prefix else value


def shown_url(action: Action) -> str:
    """The webhook's URL as logs, dead letters and the commands show it: without query and
    credentials; a URL from a secret as the secret's name only."""
    url = action.webhook.url
    if isinstance(url, Secret):
        return f"(secret {url.secret})"
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def resolve_headers(action: Action, secrets: Mapping[str, str]) -> dict[str, str]:
    """The webhook's headers with secret values filled in; raises ``MissingSecret`` naming
    the setting entry (never a value)."""
    headers: dict[str, str] = {}
    for name, value in action.webhook.headers.items():
        if isinstance(value, Secret):
            if value.secret not in secrets:
                raise MissingSecret(
                    f"action {action.name}: header {name} names secret {value.secret!r}, "
                    "which JW_ACTION_SECRETS does not hold"
                )
            headers[name] = value.prefix + secrets[value.secret]
        else:
            headers[name] = value
    return headers


def retryable(status: int | None) -> bool:
    """5xx, 408, 429 and no answer at all (time-out, refused) are tried again; any other
    4xx is the request's fault and would fail the same way again: undeliverable."""
    return status is None or status >= 500 or status in (408, 429)


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Seconds before try ``attempt + 1`` (attempt counts from 1): doubling, capped."""
    return float(min(max_s, initial_s * 2 ** (attempt - 1)))


def example_output(action: Action, at: int) -> dict[str, Any]:
    """An output that triggers ``action`` (``journeywatch actions test``)."""
    when = action.when
    journey = when.journey[0].replace("*", "example") if when.journey else "example_journey"

    def first(globs: tuple[str, ...] | None, default: str) -> str:
        return globs[0].replace("*", default) if globs else default

    kind, name = "journey", "dropped_off"
    stage: str | None = None
    value: float | None = None
    detail: dict[str, Any] = {}
    trigger = when.trigger
    if trigger == "negative_moment":
        kind, name, detail = (
            "negative_moment",
            first(when.negative_moment, "error"),
            {"severity": 0.6},
        )
    elif trigger == "moment_of_truth_failed":
        kind, name = "moment_of_truth", first(when.moment_of_truth_failed, "payment")
        detail = {"passed": False}
    elif trigger == "dropped_off":
        stage = first(when.dropped_off, "payment")
        detail = {"reason": "timeout"}
    elif trigger == "score_below":
        kind, name, value = "score", "peak_end", max(0.0, (when.score_below or 1) - 1)
    elif trigger == "csat_below":
        kind, name, value = "kpi", "csat", 1.0
    else:
        kind, name, value = "kpi", "nps", 0.0
    return {
        "type": kind,
        "name": name,
        "at": at,
        "person_id": "c:example-customer",
        "journey": journey,
        "journey_id": "example-journey-id",
        "stage": stage,
        "channel": "web",
        "touchpoint": "example.touchpoint",
        "event_id": "example-event-id",
        "value": value,
        "output_id": "0000000000000000",
        "detail": {**detail, "example": True},
    }


def unknown_names(
    actions: Actions, stages: Mapping[str, set[str]], moments: Mapping[str, set[str]]
) -> list[str]:
    """Warnings for names a rule gives that no journey has (``stages`` and ``moments`` of the
    moments of truth, by journey): such a rule never fires. Not errors: a journey may come
    later, and negative-moment kinds are not declared anywhere to check against."""
    warnings: list[str] = []
    for action in actions:
        when = action.when
        journeys = [name for name in stages if when.journey is None or _any(when.journey, name)]
        if when.journey is not None and not journeys:
            warnings.append(f"action {action.name}: no journey matches {list(when.journey)}")
            continue
        for field, known in (
            ("dropped_off", stages),
            ("moment_of_truth_failed", moments),
        ):
            globs = getattr(when, field)
            names = {name for journey in journeys for name in known[journey]}
            for glob in globs or ():
                if not any(fnmatch.fnmatchcase(name, glob) for name in names):
                    warnings.append(
                        f"action {action.name}: {field} {glob!r} matches no "
                        f"{'stage' if field == 'dropped_off' else 'moment of truth'} of "
                        f"{', '.join(journeys)}: it never fires"
                    )
    return warnings


# --- what the actions agent remembers of one customer ------------------------------------------
# One record per person (JSON, the ``action_state`` table): ``done`` (idempotency key → [event
# time, outcome]) for every trigger and rule acted on, ``last`` (rule → event time of the last
# delivered action), ``value`` (currency → revenue so far), ``newest`` (the newest trigger's
# event time). ``done`` is kept for ``memory_ms`` of event time behind ``newest``; a trigger
# older than that is stale (not acted on): it could no longer be told from one already done.
MAX_DONE: Final = 10_000  # per customer: the oldest are forgotten first beyond it


def empty_memory() -> dict[str, Any]:
    return {"done": {}, "last": {}, "value": {}, "newest": None}


def stale(memory: Mapping[str, Any], at: int, memory_ms: int) -> bool:
    newest = memory.get("newest")
    return isinstance(newest, int) and at < newest - memory_ms


def done_outcome(memory: Mapping[str, Any], key: str) -> str | None:
    entry = memory["done"].get(key)
    return str(entry[1]) if entry else None


def remember(memory: dict[str, Any], key: str, at: int, outcome: str) -> None:
    memory["done"][key] = [at, outcome]


def forget_old(memory: dict[str, Any], at: int, memory_ms: int) -> None:
    """Move ``newest`` on to ``at`` and forget what lies more than ``memory_ms`` behind it."""
    newest = max(at, memory["newest"] if isinstance(memory.get("newest"), int) else at)
    memory["newest"] = newest
    done: dict[str, list[Any]] = memory["done"]
    keep = {k: v for k, v in done.items() if v[0] >= newest - memory_ms}
    if len(keep) > MAX_DONE:
        keep = dict(sorted(keep.items(), key=lambda item: item[1][0])[-MAX_DONE:])
    memory["done"] = keep
