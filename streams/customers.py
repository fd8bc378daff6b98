"""The customer timeline for the sink's API and page and for ``journeywatch customer``
(sinks/clickhouse/customers.py reads it; docs/customer-timeline.md).

A raw e-mail address or phone number named by a request is hashed here with the product's PII
key, as the collector hashes it (pipeline/pii.py), and only the hash goes on: to ClickHouse, to
the sink's API (the command hashes before it asks), into answers. Nothing here logs it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from pipeline.pii import hash_email, hash_phone
from pipeline.settings import Settings
from sinks.clickhouse.customers import TimelineError, parse_identifier
from streams.sink_api import (
    SIGN_IN_HINT,
    NotAnApiUrl,
    SinkApiError,
    SinkUnreachable,
    call_sink_api,
)


def hashers(settings: Settings) -> dict[str, Callable[[str], str] | None]:
    """``parse_identifier``'s hash functions under the settings' PII key (None without one)."""
    if settings.pii_hash_key is None:
        return {"hash_email": None, "hash_phone": None}
    key = settings.pii_hash_key.get_secret_value().encode()
    country = settings.phone_default_country_code
    return {
        "hash_email": lambda value: hash_email(value, key),
        "hash_phone": lambda value: hash_phone(value, key, country),
    }


def identifier_key(settings: Settings, given: str) -> str:
    """The identifier key ``given`` names (raw e-mails and phones hashed)."""
    return parse_identifier(given, **hashers(settings))


def customer_path(key: str) -> str:
    """The API path of the timeline of identifier key ``key``."""
    return "/api/v1/customers/" + urllib.parse.quote(key, safe=":@")


def timeline_via_api(settings: Settings, api: str, key: str) -> dict[str, Any]:
    """``GET /api/v1/customers/{key}`` on a running sink (it owns the embedded ClickHouse)."""
    try:
        return call_sink_api(settings, api, customer_path(key))
    except NotAnApiUrl as exc:
        raise TimelineError(exc.message) from exc
    except SinkUnreachable as exc:
        raise TimelineError(exc.message, status=503) from exc
    except SinkApiError as exc:
        status = exc.status or 502
        hint = SIGN_IN_HINT if status in (401, 403) else ""
        raise TimelineError(exc.message + hint, status=status) from exc


def _cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(title: str, names: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return [
        f"{title} ({len(rows)})",
        line(names),
        "  ".join("-" * w for w in widths),
        *(line(r) for r in cells),
        "",
    ]


def render_text(timeline: dict[str, Any]) -> str:
    """The timeline as aligned tables (``journeywatch customer``)."""
    k = timeline["kpis"]
    head = [
        f"person {timeline['person_id']}"
        + (f" (customer {timeline['customer_id']})" if timeline.get("customer_id") else ""),
        f"CSAT {_cell(k['csat']['mean'])} ({k['csat']['answers']} answers)  "
        f"NPS {_cell(k['nps']['score'])} ({k['nps']['answers']} answers)  "
        f"first-contact resolution {_cell(k['first_contact_resolution']['rate'])} "
        f"({k['first_contact_resolution']['cases']} cases)  "
        f"complaint response {_cell(k['complaint_response']['mean_s'])} s  "
        f"value {k['value']['revenue']:g} {','.join(k['value']['currencies'])} "
        f"({k['value']['purchases']} purchases)",
        "",
    ]
    lines = head
    lines += _table(
        "Identity: identifiers linked",
        ["linked_at", "identifier", "person", "event"],
        [
            [
                i["linked_at"],
                i["identifier"] + (" (blocked)" if i["blocked"] else ""),
                i["person_id"],
                i["event_id"],
            ]
            for i in timeline["identifiers"]
        ],
    )
    lines += _table(
        "Identity: merges",
        ["at", "from_person", "into_person", "linked_by", "event"],
        [
            [m["at"], m["from_person"], m["into_person"], m["identifiers"], m["event_id"]]
            for m in timeline["merges"]
        ],
    )
    lines += _table(
        "Journeys",
        ["journey_id", "journey", "started_at", "stages", "outcome", "stage", "score"],
        [
            [
                j["journey_id"],
                j["journey"],
                j["started_at"],
                [s["stage"] for s in j["stages"]],
                j["outcome"],
                j["stage"],
                j["score"],
            ]
            for j in timeline["journeys"]
        ],
    )
    lines += _table(
        "Negative moments",
        ["at", "kind", "journey", "stage", "channel", "touchpoint", "moment_of_truth"],
        [
            [
                m["at"],
                m["kind"],
                m["journey"],
                m["stage"],
                m["channel"],
                m["touchpoint"],
                m["moment_of_truth"],
            ]
            for m in timeline["negative_moments"]
        ],
    )
    lines += _table(
        "Moments of truth",
        ["at", "name", "passed", "journey", "stage", "channel"],
        [
            [
                m["at"],
                m["name"],
                "yes" if m["passed"] else "no",
                m["journey"],
                m["stage"],
                m["channel"],
            ]
            for m in timeline["moments_of_truth"]
        ],
    )
    lines += _table(
        "Touchpoints",
        ["at", "channel", "touchpoint", "action", "outcome", "moments", "event_id"],
        [
            [
                t["at"],
                t["channel"],
                t["touchpoint"],
                t["action"],
                t["outcome"] + (f" ({t['outcome_reason']})" if t["outcome_reason"] else ""),
                t["negative_moments"] + t["moments_of_truth"],
                t["event_id"],
            ]
            for t in timeline["touchpoints"]
        ],
    )
    if timeline.get("truncated"):
        lines.append("(more touchpoints than shown: the first ones are listed)")
    return "\n".join(lines).rstrip() + "\n"
