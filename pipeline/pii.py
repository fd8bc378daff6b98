"""Personal data: normalise and hash e-mail addresses and phone numbers, redact free text.

Raw e-mail addresses and phone numbers never travel past the collector: they are replaced by
a keyed HMAC-SHA256 of their normalised form. The key comes from settings (``JW_PII_HASH_KEY``),
never from the repository, so a leaked table cannot be reversed by hashing a phone book.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from pipeline.contract import TouchpointEvent

# What counts as personal data in free text (docs/collector.md, "Personal data in free text").
# Each pattern starts only where a token starts (the look-behind): a match attempt never
# begins inside a word, an id or a number, which keeps a pass linear in the length of the text
# and leaves "ORD-2026-000123", "e-123456789" or a UUID alone.
#
# An e-mail address: a local part, @, dot-separated domain labels and a top-level domain of at
# least two letters ("bob@localhost" is no deliverable address and is left alone).
_EMAIL: Final = r"(?<![\w.%+\-])[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}"
# Between two digits of a phone number: at most one space, dot or dash, and parentheses.
_SEP: Final = r"\)?[ .\-]?\(?"
# A phone number: 7 to 15 digits after a +; 9 to 14 digits after a national trunk 0 or the
# international 00 (never 000: a zero-padded counter); or the North American 3-3-4 form with
# separators. Not preceded by a word character, +, -, ., /, :, # or @ (an id, a version, a
# time, a ticket number) and not followed by a word character or by -, ., :, /, "," and a
# digit (a date, a decimal, a longer number). A bare run of digits not starting with 0 (an
# epoch time, an order number) is never a phone number, nor are fewer than 9 digits without +.
_PHONE: Final = (
    r"(?<![\w+\-./:#@])"
    r"(?:"
    rf"\+ ?\(?\d(?:{_SEP}\d){{6,14}}"
    rf"|\(?0{{1,2}}[1-9](?:{_SEP}\d){{7,12}}"
    r"|\(?[2-9]\d{2}\)?[ .\-]?\d{3}[ .\-]\d{4}"
    r")"
    r"(?![\w@]|[\-.:/,]\d)"
)
_FREE_TEXT_RE: Final = re.compile(f"(?P<email>{_EMAIL})|(?P<phone>{_PHONE})")
_PHONE_RE: Final = re.compile(f"(?P<phone>{_PHONE})")  # for text without an @
_FREE_TEXT_BYTES_RE: Final = re.compile(f"(?P<email>{_EMAIL})|(?P<phone>{_PHONE})".encode())
# A JSON string that is nothing but digits and separators, 7 to 15 digits ("5550109999"): in a
# dead letter (never stored as an event) it is taken for a phone number too, order ids included.
_PHONE_VALUE_RE: Final = re.compile(rb'"\s*\+?\d(?:[\s().\-]{0,2}\d){6,14}\s*"')

REDACTED_EMAIL: Final = "[redacted-email]"
REDACTED_PHONE: Final = "[redacted-phone]"
# Without an @, a string cannot hold a phone number if it is shorter than this or has fewer
# than _FEWEST_DIGITS ASCII digits: such strings (most attribute values) skip the regex.
_SHORTEST_PHONE: Final = 8
_FEWEST_DIGITS: Final = 7
_ASCII_DIGITS: Final = b"0123456789"

FreeTextMode = Literal["redact", "hash", "off"]


def normalize_email(email: str) -> str:
    """Lower-case, trimmed. Provider-specific rules (dots, +tags) are not applied."""
    return email.strip().lower()


def normalize_phone(phone: str, default_country_code: str = "") -> str:
    """Digits only, in E.164 form when a leading + or a default country code says so."""
    stripped = phone.strip()
    digits = "".join(ch for ch in stripped if ch.isdigit())
    if stripped.startswith("+"):
        return "+" + digits
    if stripped.startswith("00"):
        return "+" + digits[2:]
    if default_country_code and digits.startswith("0"):
        return "+" + default_country_code + digits[1:]
    return digits


def keyed_hash(value: str, key: bytes) -> str:
    """HMAC-SHA256 of ``value`` under ``key``, as 64 lower-case hex characters."""
    if not key:
        raise ValueError("the PII hashing key is empty: set JW_PII_HASH_KEY")
    keyed = _KEYED.get(key)
    if keyed is None:  # the key schedule once per key: each value copies it
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(value.encode("utf-8"))
    return mac.hexdigest()


_KEYED: dict[bytes, hmac.HMAC] = {}


def hash_email(email: str, key: bytes) -> str:
    return keyed_hash(normalize_email(email), key)


def hash_phone(phone: str, key: bytes, default_country_code: str = "") -> str:
    return keyed_hash(normalize_phone(phone, default_country_code), key)


def redact(raw: bytes) -> bytes:
    """Replace anything that looks like an e-mail address or a phone number.

    Used on bytes that failed validation before they are kept in the dead-letter queue: the
    bytes stay readable for whoever fixes the producer, the personal data does not. The rule of
    free text (``scrub_text``), and any JSON string that is only a number of phone length.
    """
    redacted = _FREE_TEXT_BYTES_RE.sub(_redact_bytes, raw)
    return _PHONE_VALUE_RE.sub(b'"' + REDACTED_PHONE.encode() + b'"', redacted)


def _redact_bytes(match: re.Match[bytes]) -> bytes:
    return (REDACTED_EMAIL if match.lastgroup == "email" else REDACTED_PHONE).encode()


def _pattern_for(text: str) -> re.Pattern[str] | None:
    """The regex ``text`` needs, or None when it cannot hold an e-mail address or a phone
    number: the checks (an @; the length; the count of digits, by ``bytes.translate``) cost
    a small fraction of a regex pass, which costs some 30 ns per character."""
    if "@" in text:
        return _FREE_TEXT_RE
    if len(text) < _SHORTEST_PHONE:
        return None
    if text.isascii():  # other digits (Arabic-Indic, ...) are \d too: those go to the regex
        raw = text.encode()
        if len(raw) - len(raw.translate(None, _ASCII_DIGITS)) < _FEWEST_DIGITS:
            return None
    return _PHONE_RE


def redact_text(text: str) -> str:
    """``text`` with every e-mail address and phone number replaced by ``[redacted-email]`` /
    ``[redacted-phone]`` (for messages: a refusal's detail, an importer's error line)."""
    pattern = _pattern_for(text)
    return text if pattern is None else pattern.sub(_redact_str, text)


def _redact_str(match: re.Match[str]) -> str:
    return REDACTED_EMAIL if match.lastgroup == "email" else REDACTED_PHONE


# The event's free strings scanned besides attribute values and names. The other strings are
# identifiers (opaque: event_id, customer_id, ...), hashes, times, enumerations, or validated
# names (touchpoint, action, outcome_reason: lower-case letters, digits, _ and ., which cannot
# hold an @ and where digits always follow a letter, _ or ., so the rule finds nothing; a value
# that is not such a name is refused, and the refusal does not quote it).
FREE_TEXT_FIELDS: Final = ("session_hint", "source")


@dataclass(frozen=True, slots=True)
class FreeTextScrubber:
    """E-mail addresses and phone numbers in an event's free text, replaced before the event
    leaves the collector or the importer (``JW_FREE_TEXT_PII``):

    * ``redact``: by ``[redacted-email]`` / ``[redacted-phone]``;
    * ``hash``: by ``[email:<h>]`` / ``[phone:<h>]``, ``<h>`` the keyed hash of the normalised
      value, the same as ``email_hash`` / ``phone_hash`` of an event that names that person;
      attribute names are redacted (a hash would not fit their 64 characters);
    * ``off``: left as sent.
    """

    mode: FreeTextMode = "redact"
    key: bytes = b""
    phone_country_code: str = ""

    def __post_init__(self) -> None:
        if self.mode == "hash" and not self.key:
            raise ValueError("JW_FREE_TEXT_PII=hash needs JW_PII_HASH_KEY")

    def text(self, value: str) -> str:
        """``value`` with its e-mail addresses and phone numbers replaced (one regex pass; none
        for a string that cannot hold either: ``_pattern_for``)."""
        if self.mode == "off":
            return value
        pattern = _pattern_for(value)
        return value if pattern is None else pattern.sub(self._replace, value)

    def _replace(self, match: re.Match[str]) -> str:
        found = match.group()
        if match.lastgroup == "email":
            if self.mode == "hash":
                return f"[email:{hash_email(found, self.key)}]"
            return REDACTED_EMAIL
        if self.mode == "hash":
            return f"[phone:{hash_phone(found, self.key, self.phone_country_code)}]"
        return REDACTED_PHONE

    def event(self, item: dict[str, Any]) -> None:
        """Scrub a submitted event in place, before validation: ``FREE_TEXT_FIELDS`` and every
        attribute (string values; names, redacted). Numbers are left alone: without a + or
        separators a number is no more a phone number than a counter or an epoch time."""
        if self.mode == "off":
            return
        text = self.text
        for name in FREE_TEXT_FIELDS:
            value = item.get(name)
            if isinstance(value, str):
                item[name] = text(value)
        attributes = item.get("attributes")
        if isinstance(attributes, dict) and attributes:
            item["attributes"] = self._attributes(attributes)

    def touchpoint(self, event: TouchpointEvent) -> TouchpointEvent:
        """A validated event scrubbed as ``event`` scrubs a submitted one: the same event when
        nothing is found (the ingest, for events produced to Kafka without the collector)."""
        if self.mode == "off":
            return event
        update: dict[str, Any] = {}
        for name in FREE_TEXT_FIELDS:
            value = getattr(event, name)
            if value:
                new = self.text(value)
                if new is not value:
                    update[name] = new
        if event.attributes:
            attributes = self._attributes(event.attributes)
            if attributes is not event.attributes:
                update["attributes"] = attributes
        return event.model_copy(update=update) if update else event

    def _attributes(self, attributes: dict[Any, Any]) -> dict[Any, Any]:
        """``attributes`` scrubbed: the same dict when nothing is found."""
        text = self.text
        changed = False
        scrubbed: dict[Any, Any] = {}
        for key, value in attributes.items():
            if isinstance(value, str):
                new = text(value)
                changed = changed or new is not value
                value = new
            if isinstance(key, str):
                new_key = redact_text(key)
                changed = changed or new_key is not key
                key = new_key
            scrubbed[key] = value
        return scrubbed if changed else attributes


REDACT: Final = FreeTextScrubber()
