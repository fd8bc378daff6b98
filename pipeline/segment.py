"""The Segment HTTP tracking API, mapped onto the touchpoint contract.

Pure: a request body of ``/v1/batch`` (or of ``/v1/track``, ``/v1/page`` ...) becomes its
messages (``parse_segment_request``), and each message becomes a contract-shaped dict that the
collector then treats exactly like a native event (``pipeline.collect.prepare_event``: the raw
``email`` / ``phone`` hashed, free text scrubbed, ``source`` and ``received_at`` stamped,
validated). The HTTP and Kafka parts live in ``streams/collector.py``; the mapping table is in
docs/sources/segment.md.

* ``track`` → a touchpoint named after the event (``Checkout Payment Submitted`` →
  ``checkout.payment_submitted``), action ``track`` (or ``properties.action``), the properties as
  attributes (bounded), ``revenue`` / ``currency``.
* ``page`` / ``screen`` → a ``view`` touchpoint on ``web`` / ``app``.
* ``identify`` / ``alias`` → an ``identity.identify`` / ``identity.alias`` touchpoint carrying
  every identifier of the message: the identity graph links the identifiers an event carries
  together (``pipeline/identity.py``), so no other record is needed.
* ``group`` → accepted and skipped (journeywatch has no accounts).

Times as the Segment API defines them: ``timestamp`` corrected for the device's clock skew,
``timestamp + (receivedAt - sentAt)``, with ``receivedAt`` the collector's clock.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import orjson

from pipeline.collect import BodyError, ItemError
from pipeline.sourcemap import SourceMapping, map_named

MESSAGE_TYPES: Final = ("track", "page", "screen", "identify", "alias", "group")
SKIPPED_TYPES: Final = frozenset({"group"})
MAX_ID_CHARS: Final = 128
MAX_ATTRIBUTE_NAME: Final = 64
MAX_ATTRIBUTE_TEXT: Final = 1024  # a longer property value is cut to this many characters
MAX_ATTRIBUTES: Final = 64  # the contract's limit
MAX_TOUCHPOINT_CHARS: Final = 128
DEFAULT_CURRENCY: Final = "USD"  # Segment's e-commerce spec: revenue without currency is USD
# Segment libraries that run in an app (context.library.name), as opposed to a browser/server.
APP_LIBRARIES: Final = frozenset(
    {
        "analytics-ios",
        "analytics-android",
        "analytics-swift",
        "analytics-kotlin",
        "analytics-react-native",
        "analytics-flutter",
        "analytics-xamarin",
        "analytics-unity",
    }
)
# Properties lifted into contract fields when valid (otherwise kept as attributes).
_SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
_OUTCOMES: Final = frozenset({"ok", "error", "abandoned"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_INT_RANGE: Final = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    """The messages of one request, with the batch-level ``context``, ``sentAt`` and
    ``writeKey`` (each message's own win)."""

    messages: list[Any]
    write_key: str | None = None
    sent_at: datetime | None = None
    context: dict[str, Any] = field(default_factory=dict)


def _parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (a time without a zone is UTC, as Segment reads it), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_segment_request(body: bytes, kind: str) -> SegmentRequest:
    """The messages of a request to ``/v1/<kind>`` (``batch`` or a message type).

    Raises ``BodyError`` (a 400, naming the field) when the body as a whole is unusable."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BodyError("the body must be a JSON object")
    write_key = data.get("writeKey")
    if write_key is not None and not isinstance(write_key, str):
        raise BodyError("writeKey must be a string")
    sent_at = None
    if data.get("sentAt") is not None:
        sent_at = _parse_time(data["sentAt"])
        if sent_at is None:
            raise BodyError("sentAt must be an ISO 8601 time")
    if kind != "batch":
        message = dict(data)
        message.pop("writeKey", None)
        message["type"] = kind  # the endpoint says what it is
        return SegmentRequest([message], write_key, sent_at)
    batch = data.get("batch")
    if not isinstance(batch, list):
        raise BodyError('batch: the body of /v1/batch must hold a "batch" array of messages')
    context = data.get("context")
    if context is not None and not isinstance(context, dict):
        raise BodyError("context must be an object")
    return SegmentRequest(batch, write_key, sent_at, context or {})


def _identifier(message: dict[str, Any], name: str) -> str | None:
    """``userId``, ``anonymousId`` or ``previousId``: a string or a number, or None."""
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    return text or None


def slug(text: str) -> str:
    """Lower-case letters, digits and ``_``, starting with a letter (``n`` is put before a
    leading digit); empty when nothing of ``text`` is usable."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = _NOT_ALNUM.sub("_", _CAMEL.sub("_", ascii_text).lower()).strip("_")
    if words and words[0].isdigit():
        words = "n" + words
    return words


def touchpoint_name(name: str) -> str:
    """A Segment event or page name as a touchpoint: dots are kept as namespaces, otherwise
    the first word is the namespace (``Checkout Payment Submitted`` →
    ``checkout.payment_submitted``, ``Order Completed`` → ``order.completed``). Empty when
    nothing of the name is usable."""
    parts = [s for s in (slug(part) for part in name.split(".")) if s]
    if len(parts) == 1 and "_" in parts[0]:
        first, rest = parts[0].split("_", 1)
        parts = [first, rest if rest[0].isalpha() else "n" + rest]
    dotted = ".".join(parts)[:MAX_TOUCHPOINT_CHARS]
    return dotted.rstrip("._")


def _attribute_value(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if _INT_RANGE[0] <= value <= _INT_RANGE[1] else str(value)
    if isinstance(value, float):
        return value if abs(value) < 2.0**63 else repr(value)
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text[:MAX_ATTRIBUTE_TEXT]


def attributes_of(properties: dict[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Properties as contract attributes: at most 64, names cut to 64 characters, strings to
    1,024, objects and arrays as their JSON text, integers beyond 64 bits as strings."""
    attributes: dict[str, Any] = {}
    for name, value in properties.items():
        if name in skip:
            continue
        if len(attributes) == MAX_ATTRIBUTES:
            break
        attributes.setdefault(str(name)[:MAX_ATTRIBUTE_NAME], _attribute_value(value))
    return attributes


def channel_of(message: dict[str, Any], context: dict[str, Any]) -> str:
    """``app`` for a screen, or a message from an app (``context.app``, a mobile
    ``context.device``, an app library, ``channel: mobile``); ``web`` otherwise."""
    if message.get("type") == "screen" or message.get("channel") == "mobile":
        return "app"
    if isinstance(context.get("app"), dict) and context["app"]:
        return "app"
    device = context.get("device")
    if isinstance(device, dict) and str(device.get("type", "")).lower() in {
        "ios",
        "android",
        "mobile",
        "tablet",
        "ipados",
        "watchos",
        "tvos",
    }:
        return "app"
    library = context.get("library")
    if isinstance(library, dict) and library.get("name") in APP_LIBRARIES:
        return "app"
    return "web"


def occurred_at(
    message: dict[str, Any], batch_sent_at: datetime | None, received_at: datetime
) -> datetime | ItemError | None:
    """When the message happened, as the Segment API defines it: ``timestamp`` (or
    ``originalTimestamp``) plus ``receivedAt - sentAt`` (the device clock's skew) when the
    client said when it sent it; ``receivedAt`` when it gave no time. None: no valid time
    given where one was required (the caller names the field)."""
    for name in ("timestamp", "originalTimestamp"):
        if message.get(name) is not None and _parse_time(message[name]) is None:
            return ItemError(-1, "invalid_field", name, "must be an ISO 8601 time")
    base = _parse_time(message.get("timestamp")) or _parse_time(message.get("originalTimestamp"))
    if message.get("sentAt") is not None and _parse_time(message["sentAt"]) is None:
        return ItemError(-1, "invalid_field", "sentAt", "must be an ISO 8601 time")
    sent_at = _parse_time(message.get("sentAt")) or batch_sent_at
    if base is None:
        return received_at
    if sent_at is None:
        return base
    return base + (received_at - sent_at)


def _event_id(message: dict[str, Any]) -> str | ItemError:
    """``messageId``; without one, a hash of the message (a retry of it deduplicates)."""
    value = message.get("messageId")
    if value is None:
        canonical = orjson.dumps(
            {k: v for k, v in message.items() if k != "sentAt"}, option=orjson.OPT_SORT_KEYS
        )
        return "seg-" + hashlib.sha256(canonical).hexdigest()[:32]
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ItemError(-1, "invalid_field", "messageId", "must be a string")
    text = str(value).strip()
    if not text or len(text) > MAX_ID_CHARS:
        return ItemError(-1, "invalid_field", "messageId", "must be 1 to 128 characters")
    return text


def revenue_of(
    properties: dict[str, Any], event: dict[str, Any], where: str = "properties"
) -> ItemError | None:
    """``revenue`` and ``currency`` of ``properties`` (``where``: their object, named in an
    error) set on ``event``: rounded to 4 decimals, the currency upper case, USD without one."""
    revenue = properties.get("revenue")
    if revenue is None:
        return None
    if isinstance(revenue, bool) or not isinstance(revenue, str | int | float):
        return ItemError(-1, "invalid_field", f"{where}.revenue", "must be a number")
    try:
        amount = Decimal(str(revenue)).quantize(Decimal("0.0001"))
    except (InvalidOperation, ValueError):
        return ItemError(-1, "invalid_field", f"{where}.revenue", "must be a number")
    if not amount.is_finite() or abs(amount) >= Decimal(10) ** 14:
        return ItemError(-1, "invalid_field", f"{where}.revenue", "out of range")
    currency = properties.get("currency", DEFAULT_CURRENCY)
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{3}", currency):
        return ItemError(-1, "invalid_field", f"{where}.currency", "must be an ISO 4217 code")
    event["revenue"] = str(amount)
    event["currency"] = currency.upper()
    return None


def lift(properties: dict[str, Any], event: dict[str, Any]) -> frozenset[str]:
    """``action``, ``outcome``, ``outcome_reason`` properties that are valid contract values
    become those fields (and are not repeated as attributes)."""
    lifted = set()
    for name in ("action", "outcome_reason"):
        value = properties.get(name)
        if isinstance(value, str) and len(value) <= 64 and _SLUG.match(value):
            event[name] = value
            lifted.add(name)
    outcome = properties.get("outcome")
    if isinstance(outcome, str) and outcome in _OUTCOMES:
        event["outcome"] = outcome
        lifted.add("outcome")
    return frozenset(lifted)


def map_message(
    index: int,
    message: Any,
    request: SegmentRequest,
    received_at: datetime,
    mapping: SourceMapping | None = None,
    unmapped: list[str] | None = None,
) -> dict[str, Any] | ItemError | None:
    """One Segment message as a contract-shaped dict for ``prepare_event`` (raw ``email`` /
    ``phone`` included: it hashes them), the reason it is refused, or None when it is
    accepted and skipped (``group``). A ``track`` call goes through the source's rules
    (``mapping``, pipeline/sourcemap.py): its event name is added to ``unmapped`` when no rule
    matched it and it kept its default name."""
    result = _map(message, request, received_at, mapping, unmapped)
    if isinstance(result, ItemError):
        return ItemError(index, result.reason, result.field, result.detail)
    return result


def _map(
    message: Any,
    request: SegmentRequest,
    received_at: datetime,
    mapping: SourceMapping | None,
    unmapped: list[str] | None,
) -> dict[str, Any] | ItemError | None:
    if not isinstance(message, dict):
        return ItemError(-1, "not_an_object", "", "each message must be a JSON object")
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        return ItemError(
            -1, "invalid_field", "type", f"must be one of {', '.join(MESSAGE_TYPES)}, not {kind!r}"
        )
    if kind in SKIPPED_TYPES:
        return None
    context = message.get("context")
    if context is not None and not isinstance(context, dict):
        return ItemError(-1, "invalid_field", "context", "must be an object")
    context = {**request.context, **(context or {})}
    event_id = _event_id(message)
    if isinstance(event_id, ItemError):
        return event_id
    when = occurred_at(message, request.sent_at, received_at)
    if isinstance(when, ItemError):
        return when
    event: dict[str, Any] = {
        "event_id": event_id,
        "occurred_at": when,
        "channel": channel_of(message, context),
    }
    user_id = _identifier(message, "userId")
    anonymous_id = _identifier(message, "anonymousId")
    for name, value in (("userId", user_id), ("anonymousId", anonymous_id)):
        if value is not None and len(value) > MAX_ID_CHARS:
            return ItemError(-1, "invalid_field", name, "must be at most 128 characters")
    if user_id is not None:
        event["customer_id"] = user_id
    if anonymous_id is not None:
        event["anonymous_id"] = anonymous_id
    device = context.get("device")
    if isinstance(device, dict):
        device_id = _identifier(device, "id")
        if device_id is not None and len(device_id) <= MAX_ID_CHARS:
            event["device_id"] = device_id
    properties = message.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        return ItemError(-1, "invalid_field", "properties", "must be an object")
    mapped = _MAPPERS[kind](message, properties, event)
    if isinstance(mapped, ItemError):
        return mapped
    if kind == "track":
        mapped = map_named(mapping, str(message["event"]), properties, event, unmapped)
        if mapped is not None:
            return mapped
    if not any(k in event for k in ("customer_id", "anonymous_id", "device_id", "email", "phone")):
        return ItemError(-1, "missing_identifier", "", "a message needs a userId or anonymousId")
    return event


def _track(
    message: dict[str, Any], properties: dict[str, Any], event: dict[str, Any]
) -> ItemError | None:
    name = message.get("event")
    if not isinstance(name, str) or not name.strip():
        return ItemError(-1, "missing_field", "event", "a track call needs an event name")
    touchpoint = touchpoint_name(name)
    if not touchpoint:
        return ItemError(
            -1, "invalid_field", "event", "no touchpoint name can be made of it (no letter)"
        )
    event["touchpoint"] = touchpoint
    event["action"] = "track"
    lifted = lift(properties, event)
    error = revenue_of(properties, event)
    if error is not None:
        return error
    skip = lifted | ({"revenue", "currency"} if "revenue" in event else frozenset())
    attributes = attributes_of(properties, frozenset(skip))
    if attributes:
        event["attributes"] = attributes
    return None


def _view(
    message: dict[str, Any], properties: dict[str, Any], event: dict[str, Any]
) -> ItemError | None:
    kind = str(message["type"])
    words = [
        message[k] for k in ("category", "name") if isinstance(message.get(k), str) and message[k]
    ]
    touchpoint = touchpoint_name(" ".join(words)) if words else ""
    event["touchpoint"] = touchpoint or kind
    event["action"] = "view"
    attributes = attributes_of(properties)
    if words:
        attributes.setdefault(f"{kind}_name", " ".join(words)[:MAX_ATTRIBUTE_TEXT])
    if attributes:
        event["attributes"] = dict(list(attributes.items())[:MAX_ATTRIBUTES])
    return None


def _identity(
    message: dict[str, Any], properties: dict[str, Any], event: dict[str, Any]
) -> ItemError | None:
    kind = str(message["type"])
    event["touchpoint"] = f"identity.{kind}"
    event["action"] = kind
    if kind == "alias":
        previous = _identifier(message, "previousId")
        if previous is None:
            return ItemError(-1, "missing_field", "previousId", "an alias call needs previousId")
        if "customer_id" not in event:
            return ItemError(-1, "missing_field", "userId", "an alias call needs userId")
        if len(previous) > MAX_ID_CHARS:
            return ItemError(-1, "invalid_field", "previousId", "must be at most 128 characters")
        # previousId is the anonymousId (or an earlier userId) the user had: it becomes an
        # anonymous identifier of the customer (two known customers are never merged).
        event["anonymous_id"] = previous
        return None
    traits, where = message.get("traits"), "traits"
    if traits is None:
        # RudderStack's SDKs send an identify's traits in context.traits only (the Segment
        # spec has the user's traits there too): without this its e-mail links were lost.
        context = message.get("context")
        traits = context.get("traits") if isinstance(context, dict) else None
        where = "context.traits"
    if traits is None:
        traits = {}
    if not isinstance(traits, dict):
        return ItemError(-1, "invalid_field", where, "must be an object")
    # Only the identifying traits are used: e-mail and phone, hashed by prepare_event. Other
    # traits (names, addresses) are personal data journeywatch does not keep.
    for name in ("email", "phone"):
        value = traits.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            return ItemError(-1, "invalid_field", f"{where}.{name}", "must be a string")
        event[name] = value
    return None


_MAPPERS: Final = {
    "track": _track,
    "page": _view,
    "screen": _view,
    "identify": _identity,
    "alias": _identity,
}
