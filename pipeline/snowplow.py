"""The Snowplow tracker protocol, mapped onto the touchpoint contract.

Pure: the body of ``POST /com.snowplowanalytics.snowplow/tp2`` (a ``payload_data``
self-describing JSON) or the query string of ``GET /i`` becomes its tracker payloads
(``parse_post_body``, ``parse_query``), and each payload becomes a contract-shaped dict
(``map_event``) that the collector then treats exactly like a native event
(``pipeline.collect.prepare_event``: a raw ``email`` hashed, free text scrubbed, ``source`` and
``received_at`` stamped, validated). The HTTP and Kafka parts live in ``streams/collector.py``;
the mapping table is in docs/sources/snowplow.md.

* ``pv`` (page view) → a ``view`` touchpoint named after the page title, on ``web`` (``app``
  for the mobile platforms ``mob`` / ``app``).
* ``se`` (structured event) → a touchpoint ``<category>.<action>``, action from ``se_ac``.
* ``ue`` (self-describing event) → a touchpoint named after the event's schema
  (``iglu:com.acme/checkout_step/...`` → ``checkout.step``), its data as attributes; a mobile
  ``screen_view`` is a ``view`` on ``app``.
* ``tr`` (e-commerce transaction) → ``ecommerce.transaction`` with its revenue.
* ``pp`` (page ping) and ``ti`` (transaction item) → accepted and skipped (None).

Times as Snowplow's enrichment derives ``derived_tstamp``: the true timestamp ``ttm`` when
given; else ``dtm`` corrected for the device's clock skew, ``received - (stm - dtm)``, when the
device sent it after it created it; else the collector's receive time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from pipeline.collect import BodyError, ItemError
from pipeline.segment import (
    MAX_ATTRIBUTE_TEXT,
    MAX_ATTRIBUTES,
    MAX_ID_CHARS,
    attributes_of,
    lift,
    revenue_of,
    slug,
    touchpoint_name,
)
from pipeline.sourcemap import SourceMapping, map_named

PAYLOAD_DATA: Final = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-"
UNSTRUCT_EVENT: Final = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-"
CONTEXTS: Final = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-"
EVENT_TYPES: Final = ("pv", "se", "ue", "tr", "pp", "ti")
SKIPPED_TYPES: Final = frozenset({"pp", "ti"})
APP_PLATFORMS: Final = frozenset({"mob", "app"})
MAX_CONTEXTS: Final = 32  # context schema names kept (as one attribute) per event
_IGLU = re.compile(r"^iglu:([A-Za-z0-9_.-]+)/([A-Za-z0-9_-]+)/[A-Za-z0-9_-]+/\d+-\d+-\d+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MAX_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# Fields kept as attributes whatever the event type (tracker name → attribute name).
_COMMON: Final = (("aid", "app_id"), ("url", "url"), ("page", "page_title"), ("refr", "referrer"))
_TRANSACTION: Final = (
    ("tr_id", "order_id"),
    ("tr_af", "affiliation"),
    ("tr_tx", "tax"),
    ("tr_sh", "shipping"),
    ("tr_ci", "city"),
    ("tr_st", "state"),
    ("tr_co", "country"),
)


def parse_post_body(body: bytes) -> list[Any]:
    """The tracker payloads of a ``tp2`` body: ``{"schema": "iglu:.../payload_data/
    jsonschema/1-0-x", "data": [payloads]}``. Raises ``BodyError`` (a 400 naming the field)
    when the body as a whole is unusable."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BodyError("the body must be a JSON object (a payload_data self-describing JSON)")
    schema = data.get("schema")
    if not isinstance(schema, str) or not schema.startswith(PAYLOAD_DATA):
        raise BodyError(f"schema: must be {PAYLOAD_DATA}<n>, not {str(schema)[:200]!r}")
    events = data.get("data")
    if not isinstance(events, list):
        raise BodyError("data: must be an array of tracker payloads")
    return events


def parse_query(query: Mapping[str, str]) -> list[Any]:
    """The one tracker payload of a ``GET /i`` request (its query parameters). Raises
    ``BodyError`` when there is none."""
    if "e" not in query:
        raise BodyError("e: a tracker payload needs an event type (no e parameter)")
    return [dict(query)]


def _text(payload: Mapping[str, Any], name: str) -> str | None:
    """A tracker field as text (trackers send every value as a string; a number is read too),
    stripped; None when absent or empty."""
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    return text or None


def _millis(payload: Mapping[str, Any], name: str) -> datetime | ItemError | None:
    """A tracker time (milliseconds since the epoch), None when absent."""
    text = _text(payload, name)
    if text is None:
        return None
    try:
        millis = int(text)
    except ValueError:
        return ItemError(-1, "invalid_field", name, "must be milliseconds since the epoch")
    if not 0 <= millis <= _MAX_MS:
        return ItemError(-1, "invalid_field", name, "out of range")
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)


def occurred_at(payload: Mapping[str, Any], received_at: datetime) -> datetime | ItemError:
    """When the event happened, as Snowplow's ``derived_tstamp``: ``ttm`` when given, else
    ``received_at - (stm - dtm)`` when the device sent the event after it created it, else
    ``received_at``."""
    times = {}
    for name in ("ttm", "dtm", "stm"):
        value = _millis(payload, name)
        if isinstance(value, ItemError):
            return value
        times[name] = value
    true, created, sent = times["ttm"], times["dtm"], times["stm"]
    if true is not None:
        return true
    if created is not None and sent is not None and created < sent:
        return received_at - (sent - created)
    return received_at


def event_id(payload: Mapping[str, Any]) -> str | ItemError:
    """``eid``; without one, ``sp-`` and a hash of the payload less ``stm`` (the same on a
    retry)."""
    value = payload.get("eid")
    if value is None:
        canonical = orjson.dumps(
            {str(k): v for k, v in payload.items() if k != "stm"},
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
            default=str,
        )
        return "sp-" + hashlib.sha256(canonical).hexdigest()[:32]
    text = _text(payload, "eid")
    if text is None or len(text) > MAX_ID_CHARS:
        return ItemError(-1, "invalid_field", "eid", "must be a string of 1 to 128 characters")
    return text


def decode_json(payload: Mapping[str, Any], plain: str, encoded: str) -> Any | ItemError:
    """The JSON of ``plain`` (``ue_pr``, ``co``), else of the base64url ``encoded`` (``ue_px``,
    ``cx``, padding optional); None when neither is given."""
    name, raw = plain, payload.get(plain)
    if raw is None:
        name, raw = encoded, payload.get(encoded)
        if raw is None:
            return None
        if not isinstance(raw, str):
            return ItemError(-1, "invalid_field", name, "must be base64url-encoded JSON")
        try:
            raw = base64.urlsafe_b64decode(raw.strip() + "=" * (-len(raw.strip()) % 4))
        except (binascii.Error, ValueError):
            return ItemError(-1, "invalid_field", name, "must be base64url-encoded JSON")
    if not isinstance(raw, str | bytes):
        return ItemError(-1, "invalid_field", name, "must be JSON text")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ItemError(-1, "invalid_field", name, "must be JSON text")


def schema_name(uri: Any) -> str | None:
    """The name of an Iglu schema URI (``iglu:com.acme/checkout_step/jsonschema/1-0-0`` →
    ``checkout_step``), None when ``uri`` is not one."""
    match = _IGLU.match(uri) if isinstance(uri, str) else None
    return match.group(2) if match else None


def _contexts(payload: Mapping[str, Any], event: dict[str, Any]) -> str | ItemError | None:
    """The schema names of the event's contexts (``co`` / ``cx``), comma-separated; their data
    is not kept, except a mobile ``client_session``'s ids when the payload has none."""
    decoded = decode_json(payload, "co", "cx")
    if decoded is None or isinstance(decoded, ItemError):
        return decoded
    field = "co" if "co" in payload else "cx"
    if not isinstance(decoded, dict) or not isinstance(decoded.get("data"), list):
        return ItemError(-1, "invalid_field", field, "must be a contexts self-describing JSON")
    names = []
    for context in decoded["data"][:MAX_CONTEXTS]:
        name = schema_name(context.get("schema")) if isinstance(context, dict) else None
        if name is None:
            continue
        names.append(name)
        data = context.get("data")
        if name == "client_session" and isinstance(data, dict):
            for key, into in (("userId", "anonymous_id"), ("sessionId", "session_hint")):
                value = _text(data, key)
                if value is not None and len(value) <= MAX_ID_CHARS:
                    event.setdefault(into, value)
    return ",".join(names)[:MAX_ATTRIBUTE_TEXT] or None


def channel_of(payload: Mapping[str, Any]) -> str:
    """``app`` for the mobile platforms (``p`` = ``mob`` or ``app``), ``web`` otherwise."""
    return "app" if _text(payload, "p") in APP_PLATFORMS else "web"


def _identifiers(payload: Mapping[str, Any], event: dict[str, Any]) -> ItemError | None:
    """``uid`` → ``customer_id`` (an e-mail address → ``email``, hashed by prepare_event),
    ``duid`` → ``anonymous_id``, ``tnuid`` (else ``nuid``) → ``device_id``, ``sid`` →
    ``session_hint``."""
    for name in ("uid", "duid", "tnuid", "nuid", "sid"):
        value = _text(payload, name)
        if value is not None and len(value) > MAX_ID_CHARS:
            return ItemError(-1, "invalid_field", name, "must be at most 128 characters")
    user = _text(payload, "uid")
    if user is not None:
        event["email" if _EMAIL.match(user) else "customer_id"] = user
    for name, into in (
        ("duid", "anonymous_id"),
        ("tnuid", "device_id"),
        ("nuid", "device_id"),
        ("sid", "session_hint"),
    ):
        value = _text(payload, name)
        if value is not None:
            event.setdefault(into, value)
    return None


def map_event(
    index: int,
    payload: Any,
    received_at: datetime,
    mapping: SourceMapping | None = None,
    unmapped: list[str] | None = None,
) -> dict[str, Any] | ItemError | None:
    """One tracker payload as a contract-shaped dict for ``prepare_event`` (a raw ``email``
    included: it hashes it), the reason it is refused, or None when it is accepted and skipped
    (``pp``, ``ti``). A structured or self-describing event goes through the source's rules
    (``mapping``, pipeline/sourcemap.py; its name: ``<se_ca>.<se_ac>``, or the schema's
    ``<vendor>/<name>``): the name is added to ``unmapped`` when no rule matched it."""
    result = _map(payload, received_at, mapping, unmapped)
    if isinstance(result, ItemError):
        return ItemError(index, result.reason, result.field, result.detail)
    return result


def _map(
    payload: Any,
    received_at: datetime,
    mapping: SourceMapping | None,
    unmapped: list[str] | None,
) -> dict[str, Any] | ItemError | None:
    if not isinstance(payload, dict):
        return ItemError(-1, "not_an_object", "", "each tracker payload must be a JSON object")
    kind = _text(payload, "e")
    if kind not in EVENT_TYPES:
        return ItemError(
            -1, "invalid_field", "e", f"must be one of {', '.join(EVENT_TYPES)}, not {kind!r}"
        )
    if kind in SKIPPED_TYPES:
        return None
    eid = event_id(payload)
    if isinstance(eid, ItemError):
        return eid
    when = occurred_at(payload, received_at)
    if isinstance(when, ItemError):
        return when
    event: dict[str, Any] = {"event_id": eid, "occurred_at": when, "channel": channel_of(payload)}
    error = _identifiers(payload, event)
    if error is not None:
        return error
    attributes: dict[str, Any] = {}
    for name, into in _COMMON:
        value = _text(payload, name)
        if value is not None:
            attributes[into] = value
    contexts = _contexts(payload, event)
    if isinstance(contexts, ItemError):
        return contexts
    if contexts:
        attributes["contexts"] = contexts
    named = _MAPPERS[kind](payload, event, attributes)
    if isinstance(named, ItemError):
        return named
    if named is not None:  # an event the source's rules may map
        name, properties, where = named
        error = map_named(mapping, name, properties, event, unmapped, where)
        if error is not None:
            return error
    attributes = attributes_of(attributes)
    if attributes:
        event["attributes"] = attributes
    if not any(k in event for k in ("customer_id", "anonymous_id", "device_id", "email")):
        return ItemError(
            -1, "missing_identifier", "", "a tracker payload needs a uid, duid, nuid or tnuid"
        )
    return event


# What a mapper gives the source's rules: the event's name, its properties and where those are
# (named in an error); None: the rules do not apply to it (page views, transactions).
Named = tuple[str, Mapping[str, Any], str]


def _page_view(
    payload: Mapping[str, Any], event: dict[str, Any], attributes: dict[str, Any]
) -> ItemError | Named | None:
    title = _text(payload, "page")
    event["touchpoint"] = (touchpoint_name(title) if title else "") or "page"
    event["action"] = "view"
    return None


def _structured(
    payload: Mapping[str, Any], event: dict[str, Any], attributes: dict[str, Any]
) -> ItemError | Named | None:
    category, action = _text(payload, "se_ca"), _text(payload, "se_ac")
    if category is None or action is None:
        name = "se_ca" if category is None else "se_ac"
        return ItemError(-1, "missing_field", name, "a structured event needs se_ca and se_ac")
    touchpoint = touchpoint_name(f"{category}.{action}")
    if not touchpoint:
        return ItemError(
            -1, "invalid_field", "se_ca", "no touchpoint name can be made of it (no letter)"
        )
    event["touchpoint"] = touchpoint
    event["action"] = slug(action)[:64].rstrip("_") or "event"
    for name, into in (("se_la", "label"), ("se_pr", "property")):
        value = _text(payload, name)
        if value is not None:
            attributes[into] = value
    value = _text(payload, "se_va")
    if value is not None:
        try:
            number = float(value)
        except ValueError:
            return ItemError(-1, "invalid_field", "se_va", "must be a number")
        attributes["value"] = number if abs(number) < 2.0**63 else value
    properties = {
        into: _text(payload, name)
        for name, into in (
            ("se_ca", "category"),
            ("se_ac", "action"),
            ("se_la", "label"),
            ("se_pr", "property"),
            ("se_va", "value"),
        )
        if _text(payload, name) is not None
    }
    return f"{category}.{action}", properties, "se"


def _self_describing(
    payload: Mapping[str, Any], event: dict[str, Any], attributes: dict[str, Any]
) -> ItemError | Named | None:
    decoded = decode_json(payload, "ue_pr", "ue_px")
    if isinstance(decoded, ItemError):
        return decoded
    field = "ue_pr" if "ue_pr" in payload else "ue_px"
    if decoded is None:
        return ItemError(
            -1, "missing_field", "ue_pr", "a self-describing event needs ue_pr or ue_px"
        )
    inner = decoded.get("data") if isinstance(decoded, dict) else None
    if (
        not isinstance(decoded, dict)
        or not str(decoded.get("schema", "")).startswith(UNSTRUCT_EVENT)
        or not isinstance(inner, dict)
    ):
        return ItemError(
            -1, "invalid_field", field, "must be an unstruct_event self-describing JSON"
        )
    name = schema_name(inner.get("schema"))
    if name is None:
        return ItemError(-1, "invalid_field", f"{field}.data.schema", "must be an Iglu schema URI")
    data = inner.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ItemError(-1, "invalid_field", f"{field}.data.data", "must be an object")
    if name == "screen_view":  # the mobile trackers' screen view
        screen = _text(data, "name")
        event["touchpoint"] = (touchpoint_name(screen) if screen else "") or "screen"
        event["action"] = "view"
        event["channel"] = "app"
    else:
        touchpoint = touchpoint_name(name)
        if not touchpoint:
            return ItemError(-1, "invalid_field", f"{field}.data.schema", "no letter in its name")
        event["touchpoint"] = touchpoint
        event["action"] = "track"
    lifted = lift(data, event)
    error = revenue_of(data, event, f"{field}.data.data")
    if error is not None:
        return error
    skip = lifted | ({"revenue", "currency"} if "revenue" in event else frozenset())
    attributes["schema"] = str(inner["schema"])
    room = MAX_ATTRIBUTES - len(attributes)
    for key, value in list(attributes_of(data, frozenset(skip)).items())[: max(room, 0)]:
        attributes.setdefault(key, value)
    match = _IGLU.match(str(inner["schema"]))
    vendor = match.group(1) if match else ""
    return f"{vendor}/{name}", data, f"{field}.data.data"


def _transaction(
    payload: Mapping[str, Any], event: dict[str, Any], attributes: dict[str, Any]
) -> ItemError | Named | None:
    event["touchpoint"] = "ecommerce.transaction"
    event["action"] = "purchase"
    total = _text(payload, "tr_tt")
    if total is not None:
        error = revenue_of(
            {"revenue": total, "currency": _text(payload, "tr_cu") or "USD"}, event, "tr"
        )
        if error is not None:
            return ItemError(
                -1, error.reason, "tr_tt" if error.field == "tr.revenue" else "tr_cu", error.detail
            )
    for name, into in _TRANSACTION:
        value = _text(payload, name)
        if value is not None:
            attributes[into] = value
    return None


_MAPPERS: Final = {
    "pv": _page_view,
    "se": _structured,
    "ue": _self_describing,
    "tr": _transaction,
}
