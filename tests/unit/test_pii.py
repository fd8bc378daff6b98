from __future__ import annotations

import pytest

from pipeline.pii import hash_email, hash_phone, keyed_hash, normalize_phone, redact

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
