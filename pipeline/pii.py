"""Personal data: normalise and hash e-mail addresses and phone numbers, redact free text.

Raw e-mail addresses and phone numbers never travel past the collector: they are replaced by
a keyed HMAC-SHA256 of their normalised form. The key comes from settings (``JW_PII_HASH_KEY``),
never from the repository, so a leaked table cannot be reversed by hashing a phone book.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

_EMAIL_RE: Final = re.compile(rb"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# A JSON string that is nothing but a phone number ("0791 234 567", "+1 (555) 010-9999"), or an
# international number (+ and 7 to 15 digits) anywhere in free text. Bare numbers such as epoch
# milliseconds or counters are left alone: they are not strings.
_PHONE_VALUE_RE: Final = re.compile(rb'"\s*\+?\d(?:[\s().\-]{0,2}\d){6,14}\s*"')
_PHONE_TEXT_RE: Final = re.compile(rb"\+\d(?:[\s().\-]{0,2}\d){6,14}(?!\d)")


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
    bytes stay readable for whoever fixes the producer, the personal data does not.
    """
    redacted = _EMAIL_RE.sub(b"[redacted-email]", raw)
    redacted = _PHONE_VALUE_RE.sub(b'"[redacted-phone]"', redacted)
    return _PHONE_TEXT_RE.sub(b"[redacted-phone]", redacted)
