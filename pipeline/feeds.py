"""Imported rows as touchpoint events: touchpoints in the event contract (``--kind
touchpoints``), and the row helpers of the export mappings (pipeline/importmap.py: the
contact-centre and store exports and any ``--mapping`` file).

Each row becomes one event, or a :class:`RowError` that names the column and the problem.
Event ids are derived from the row's content, so importing the same file twice produces the
same events (deduplicated downstream on ``event_id``). docs/feeds.md documents the mappings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pipeline.pii import hash_email, hash_phone

Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RowError:
    column: str
    problem: str

    def __str__(self) -> str:
        return f"{self.column}: {self.problem}" if self.column else self.problem


class BadRow(Exception):
    def __init__(self, column: str, problem: str) -> None:
        super().__init__(problem)
        self.error = RowError(column, problem)


def cell(row: Row, column: str, required: bool = True) -> str | None:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadRow(column, "is required")
        return None
    return str(value).strip()


def derived_event_id(feed: str, *parts: object) -> str:
    digest = hashlib.blake2b("|".join(map(str, (feed, *parts))).encode(), digest_size=16)
    return f"{feed}-{digest.hexdigest()}"


# The wrap-up codes of a resolved call: the contact-centre import mapping
# (pipeline/defaults/import-contact-center.yaml) and Amazon Connect contact records.
RESOLVED_WRAP_UP_CODES: Final = frozenset({"resolved", "fixed", "answered_question"})


def map_touchpoint(
    row: Row, pii_key: bytes, country_code: str = "", known: dict[str, dict[str, str]] | None = None
) -> dict[str, Any] | RowError:
    """One touchpoint in journeywatch's own event contract (docs/event-contract.md), as the
    collector takes it: ``email`` and ``phone`` are hashed here and never stored raw; the
    contract's validation follows. ``source`` defaults to ``import``."""
    event = dict(row)
    try:
        email = event.pop("email", None)
        if email is not None:
            if not isinstance(email, str) or "@" not in email:
                raise BadRow("email", "must be an e-mail address")
            event["email_hash"] = hash_email(email, pii_key)
        phone = event.pop("phone", None)
        if phone is not None:
            if not isinstance(phone, str) or sum(ch.isdigit() for ch in phone) < 6:
                raise BadRow("phone", "must be a phone number")
            event["phone_hash"] = hash_phone(phone, pii_key, country_code)
    except BadRow as bad:
        return bad.error
    event.pop("received_at", None)  # when journeywatch received it: now, not the export's
    event.setdefault("source", "import")
    return event


Mapper = Callable[[Row, bytes, str, dict[str, dict[str, str]] | None], dict[str, Any] | RowError]
