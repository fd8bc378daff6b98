from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract import Rejection, RejectReason, TouchpointEvent, decode_touchpoint
from pipeline.deadletter import dead_letter_headers
from pipeline.pii import (
    REDACT,
    REDACTED_EMAIL,
    REDACTED_PHONE,
    FreeTextScrubber,
    hash_email,
    hash_phone,
    keyed_hash,
    normalize_phone,
    redact,
    redact_text,
)

KEY = b"test-key"


def test_email_hash_ignores_case_and_spaces_and_depends_on_the_key() -> None:
    assert hash_email(" Jane.Doe@Example.com ", KEY) == hash_email("jane.doe@example.com", KEY)
    assert hash_email("jane.doe@example.com", KEY) != hash_email("jane.doe@example.com", b"other")
    assert len(hash_email("jane.doe@example.com", KEY)) == 64


def test_phone_numbers_normalise_to_one_form() -> None:
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"
    assert normalize_phone("0044 20 7946 0958") == "+442079460958"
    assert normalize_phone("020 7946 0958", default_country_code="44") == "+442079460958"
    assert hash_phone("+44 (20) 7946-0958", KEY) == hash_phone("0044 20 7946 0958", KEY)


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="JW_PII_HASH_KEY"):
        keyed_hash("x", b"")


def test_redact_removes_emails_and_phone_numbers_but_keeps_other_numbers() -> None:
    raw = (
        b'{"email":"Jane.Doe+x@example.co.uk","phone":"+44 20 7946 0958","p2":"07946095800",'
        b'"note":"call +1 (555) 010-9999 now","ts":"2026-11-23T10:00:00Z","n":12345,'
        b'"id":"e-123456789","t":1700000000123}'
    )
    out = redact(raw)
    for secret in (b"Jane.Doe", b"example.co.uk", b"7946", b"07946095800", b"555"):
        assert secret not in out
    for kept in (b"2026-11-23T10:00:00Z", b"12345", b"e-123456789", b"1700000000123"):
        assert kept in out
    assert out.count(b"[redacted-phone]") == 3 and out.count(b"[redacted-email]") == 1


# --- Personal data in free text (JW_FREE_TEXT_PII) -------------------------------------------

# What must never be taken for an e-mail address or a phone number.
NOT_PERSONAL = [
    "2026-11-23T10:00:00Z",
    "2026-11-23T10:00:00.123+01:00",
    "2026-11-23 10:00:00",
    "23.11.2026",
    "10:00-18:00",
    "1,299.00",
    "1234.56",
    "EUR 19.99",
    "123e4567-e89b-12d3-a456-426614174000",
    "01234567-8901-2345-6789-012345678901",
    "ORD-2026-000123",
    "2026-000123",
    "e-123456789",
    "1700000000123",
    "000123456789",
    "order 12345678",
    "ticket #0791234567",
    "192.168.100.200",
    "v1.2.3",
    "+5 points",
    "bob@localhost",
    "4111 1111 1111 1111",
]
PERSONAL = [
    ("Jane.Doe+x@example.co.uk", REDACTED_EMAIL),
    ("mailto:bob@corp.example", "mailto:" + REDACTED_EMAIL),
    ("+44 20 7946 0958", REDACTED_PHONE),
    ("+447946095800", REDACTED_PHONE),
    ("0044 20 7946 0958", REDACTED_PHONE),
    ("020 7946 0958", REDACTED_PHONE),
    ("07946095800", REDACTED_PHONE),
    ("06 12 34 56 78", REDACTED_PHONE),
    ("call +1 (555) 010-9999 now", f"call {REDACTED_PHONE} now"),
    ("(555) 010-9999", REDACTED_PHONE),
    ("555-010-9999.", REDACTED_PHONE + "."),
]


@pytest.mark.parametrize("text", NOT_PERSONAL)
def test_ids_times_prices_and_numbers_are_not_personal_data(text: str) -> None:
    assert redact_text(text) == text
    assert FreeTextScrubber("hash", KEY).text(text) == text


@pytest.mark.parametrize(("text", "redacted"), PERSONAL)
def test_email_addresses_and_phone_numbers_are_redacted(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted
    assert FreeTextScrubber("off").text(text) == text


def test_hash_mode_replaces_them_by_the_keyed_hash_of_the_identifier_fields() -> None:
    scrub = FreeTextScrubber("hash", KEY, phone_country_code="44")
    text = "from Jane.Doe@Example.com, call back on 020 7946 0958 about ORD-2026-000123"
    assert scrub.text(text) == (
        f"from [email:{hash_email('jane.doe@example.com', KEY)}], call back on "
        f"[phone:{hash_phone('+442079460958', KEY)}] about ORD-2026-000123"
    )
    with pytest.raises(ValueError, match="JW_PII_HASH_KEY"):
        FreeTextScrubber("hash")


def test_an_event_has_its_free_text_scrubbed_and_its_identifiers_kept() -> None:
    item = {
        "event_id": "e-1",
        "customer_id": "c-1042",
        "touchpoint": "contact.form",
        "session_hint": "jane@example.com",
        "source": "crm +44 20 7946 0958",
        "attributes": {
            "note": "reach me at jane@example.com or 07946095800",
            "order": "ORD-2026-000123",
            "jane@example.com": True,
            "amount": 4420794609,
            "ok": None,
        },
    }
    REDACT.event(item)
    assert item == {
        "event_id": "e-1",
        "customer_id": "c-1042",
        "touchpoint": "contact.form",
        "session_hint": REDACTED_EMAIL,
        "source": f"crm {REDACTED_PHONE}",
        "attributes": {
            "note": f"reach me at {REDACTED_EMAIL} or {REDACTED_PHONE}",
            "order": "ORD-2026-000123",
            REDACTED_EMAIL: True,
            "amount": 4420794609,
            "ok": None,
        },
    }
    untouched = {"attributes": {"page": "/checkout"}, "session_hint": "s-1"}
    attributes = untouched["attributes"]
    REDACT.event(untouched)
    assert untouched["attributes"] is attributes  # nothing found: nothing copied


_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ", min_size=1, max_size=8)
_NOT_PERSONAL = st.one_of(
    _WORDS,
    st.sampled_from(NOT_PERSONAL),
    st.datetimes(timezones=st.just(UTC)).map(lambda at: at.isoformat()),
    st.uuids().map(str),
    st.decimals(0, 10**6, places=2).map(str),
    st.integers(0, 10**13).map(str),
    st.integers(0, 10**6).map(lambda n: f"ORD-2026-{n:06d}"),
)
_EMAILS = st.builds(
    "{}@{}.{}".format,
    st.text(alphabet="abcxyzABC0189._+-", min_size=1, max_size=12),
    st.text(alphabet="abcxyz0189-", min_size=1, max_size=10),
    st.text(alphabet="abcdefxyz", min_size=2, max_size=6),
)


def _grouped(digits: str, separators: list[str]) -> str:
    return "".join(d + (separators[i] if i < len(separators) else "") for i, d in enumerate(digits))


_SEPARATORS = st.lists(st.sampled_from(["", "", " ", "-", "."]), min_size=16, max_size=16)
_PHONES = st.one_of(
    st.builds(
        lambda digits, seps: "+" + _grouped(digits, seps[: len(digits) - 1]),
        st.text(alphabet="0123456789", min_size=7, max_size=15),
        _SEPARATORS,
    ),
    st.builds(
        lambda first, rest, seps: "0" + _grouped(first + rest, seps[: len(rest)]),
        st.sampled_from("123456789"),
        st.text(alphabet="0123456789", min_size=8, max_size=12),
        _SEPARATORS,
    ),
    st.builds(
        "({}) {}-{}".format,
        st.integers(200, 999),
        st.integers(0, 999).map(lambda n: f"{n:03d}"),
        st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    ),
)
_SPACES = st.sampled_from([" ", ", ", "; ", " / ", " (", ") ", ": ", "\n"])


@given(st.lists(st.tuples(_WORDS, _SPACES, _NOT_PERSONAL, _SPACES), max_size=12))
def test_text_without_email_or_phone_is_left_unchanged(parts: list[tuple[str, ...]]) -> None:
    text = "".join("".join(part) for part in parts)
    assert redact_text(text) == text
    assert redact(text.encode()) == text.encode()


@given(
    st.lists(
        st.tuples(
            _WORDS,
            st.sampled_from([" ", ", ", "; ", " / ", ": ", "\n"]),  # "(" may join the match
            st.one_of(
                _NOT_PERSONAL.map(lambda t: (t, t)),
                _EMAILS.map(lambda e: (e, REDACTED_EMAIL)),
                _PHONES.map(lambda p: (p, REDACTED_PHONE)),
            ),
            st.sampled_from([" ", ", ", "; ", ") ", "\n"]),
        ),
        max_size=12,
    )
)
def test_every_email_and_phone_put_in_text_is_redacted_and_the_rest_kept(
    parts: list[tuple[str, str, tuple[str, str], str]],
) -> None:
    text = "".join(word + space + sent + end for word, space, (sent, _), end in parts)
    expected = "".join(word + space + kept + end for word, space, (_, kept), end in parts)
    assert redact_text(text) == expected
    assert REDACT.text(text) == expected


def test_redaction_is_linear_in_the_length_of_the_text() -> None:
    """Every match starts where a token starts: 64 KiB without an @ is one pass, not a
    quadratic search (the dead-letter redaction took 3.3 s for this before)."""
    for raw in (b"a" * 65_536, b"a.b-" * 16_384, b"1-" * 32_768, b"x@" * 32_768):
        started = time.perf_counter()
        redact(raw)
        redact_text(raw.decode())
        assert time.perf_counter() - started < 0.5


def test_a_dead_letter_keeps_no_email_or_phone_in_its_value_or_headers() -> None:
    """The ingest's refusal path (streams/ingest.py): ``redact(raw)`` as the value, the
    headers from ``dead_letter_headers``; a field named after an address is quoted by the
    refusal, and a source may hold one too."""
    raw = orjson.dumps(
        {
            "event_id": "e-1",
            "occurred_at": "2026-11-23T10:00:00Z",
            "channel": "web",
            "touchpoint": "home.view",
            "action": "view",
            "device_id": "d-1",
            "source": "crm of jane@example.com",
            "attributes": {"note": "call +44 20 7946 0958", "order": "ORD-2026-000123"},
            "jane@example.com": 1,
        }
    )
    rejection = decode_touchpoint(raw, datetime(2026, 11, 23, 10, tzinfo=UTC))
    assert isinstance(rejection, Rejection) and rejection.reason == RejectReason.UNKNOWN_FIELD
    assert "jane@example.com" in rejection.field  # what the ingest would otherwise keep
    headers = dead_letter_headers(rejection, "touchpoints.raw", 0, 1, datetime.now(UTC))
    value = redact(raw)
    for kept in [value, *(h.encode() for h in headers.values())]:
        assert b"jane@example.com" not in kept and b"7946" not in kept
    assert headers["jw.error.field"] == REDACTED_EMAIL
    assert b"ORD-2026-000123" in value and b'"note":"call [redacted-phone]"' in value


def test_a_validated_event_is_scrubbed_at_the_ingest_and_kept_when_clean() -> None:
    """Events produced to touchpoints.raw without the collector: the ingest scrubs the
    validated event (the same object when there is nothing to replace)."""
    received = datetime(2026, 11, 23, 10, tzinfo=UTC)
    base = {
        "event_id": "e-1",
        "occurred_at": "2026-11-23T10:00:00Z",
        "channel": "web",
        "touchpoint": "home.view",
        "action": "view",
        "device_id": "d-1",
    }
    clean = decode_touchpoint(orjson.dumps({**base, "attributes": {"n": 1}}), received)
    assert isinstance(clean, TouchpointEvent) and REDACT.touchpoint(clean) is clean
    dirty = decode_touchpoint(
        orjson.dumps(
            {**base, "session_hint": "a@b.cc", "attributes": {"note": "ring 020 7946 0958"}}
        ),
        received,
    )
    assert isinstance(dirty, TouchpointEvent)
    scrubbed = REDACT.touchpoint(dirty)
    assert scrubbed.session_hint == REDACTED_EMAIL
    assert scrubbed.attributes == {"note": f"ring {REDACTED_PHONE}"}
    assert b"7946" not in scrubbed.to_json() and FreeTextScrubber("off").touchpoint(dirty) is dirty
