"""One customer's timeline (GET /api/v1/customers/{identifier}, /customers/<id>,
``journeywatch customer ID``; docs/customer-timeline.md).

A request names the customer by any identifier (``parse_identifier``: ``kind:value``, a bare
customer id, a raw e-mail or phone number hashed with the PII key as the collector hashes it).
``read_timeline`` then reads, each by key, never by a scan (migration 0012):

1. the person the identifier belongs to now (``identity_links``: its latest link, then the
   merges that took that person into another, followed forward);
2. that person's outputs and those of every person merged into it, transitively
   (``person_outputs``, ordered by person): journeys, stages, outcomes, scores, negative
   moments, moments of truth, KPIs, links and merges;
3. the touchpoints under the person's identifiers (``touchpoints_by_identifier``, ordered by
   identifier), leaving out identifiers blocked as shared (a kiosk) and touchpoints that name
   another customer.

``assemble`` (pure) turns the rows into the timeline; tests/unit/test_customer_timeline.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import orjson
from clickhouse_connect.driver.client import Client

from sinks.clickhouse.erasure import IDENTIFIER_COLUMNS

CUSTOMER: Final = "customer_id:"
MAX_ROUNDS: Final = 8  # merges followed back (persons merged into persons merged into ...)
MAX_PERSONS: Final = 1_000
MAX_TOUCHPOINTS: Final = 5_000
MAX_OUTPUTS: Final = 20_000
OUTCOME_RANK: Final = {"retired": 5, "merged": 4, "converted": 3, "dropped_off": 2}
_PHONE: Final = re.compile(r"^\+[0-9 ().\-]{6,}$")
OUTPUT_COLUMNS: Final = (
    "person_id",
    "at",
    "output_id",
    "type",
    "name",
    "journey",
    "journey_id",
    "stage",
    "channel",
    "touchpoint",
    "event_id",
    "value",
    "detail",
)
TOUCHPOINT_COLUMNS: Final = (
    "event_id",
    "occurred_at",
    "identifiers",
    "customer_id",
    "channel",
    "touchpoint",
    "action",
    "outcome",
    "outcome_reason",
    "session_hint",
    "duration_ms",
    "wait_ms",
    "csat",
    "nps",
    "sentiment",
    "revenue",
    "currency",
    "source",
)


class TimelineError(ValueError):
    """A request naming no customer (400), or one nobody is known by (``status`` 404)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_identifier(
    text: str,
    hash_email: Callable[[str], str] | None = None,
    hash_phone: Callable[[str], str] | None = None,
) -> str:
    """The identifier key (``kind:value``) a request names: ``kind:value`` with a kind of the
    event contract, ``email:`` or ``phone:`` with the raw address or number (hashed with the
    given functions: the PII key's, as the collector hashes), a person id (``c:<customer>``,
    ``a:<identifier key>``), a raw e-mail address or a phone number starting with ``+``, or
    else a bare customer id. The raw value is never kept: only the returned key."""
    text = text.strip()
    if not text:
        raise TimelineError("name a customer: an identifier kind:value or a customer id")
    kind, sep, value = text.partition(":")
    if sep and kind == "c" and value:
        return CUSTOMER + value
    if sep and kind == "a" and value:
        return parse_identifier(value, hash_email, hash_phone)
    if sep and kind in IDENTIFIER_COLUMNS:
        if not value:
            raise TimelineError(f"an empty {kind}")
        return kind + ":" + value
    if (sep and kind in ("email", "phone")) or (not sep and ("@" in text or _PHONE.match(text))):
        raw = value if sep and kind in ("email", "phone") else text
        is_email = kind == "email" if sep else "@" in text
        hasher = hash_email if is_email else hash_phone
        if not raw:
            raise TimelineError(f"an empty {'email' if is_email else 'phone'}")
        if hasher is None:
            raise TimelineError(
                "JW_PII_HASH_KEY is not set: e-mails and phones cannot be hashed", status=503
            )
        return ("email_hash:" if is_email else "phone_hash:") + hasher(raw)
    return CUSTOMER + text  # a bare customer id (one with a colon of its own too)


def person_key(person_id: str) -> str:
    """The identifier key that names a person on the customer page (its anchor)."""
    if person_id.startswith("c:"):
        return CUSTOMER + person_id[2:]
    return person_id[2:] if person_id.startswith("a:") else person_id


def blocked_output_id(identifier: str) -> str:
    """The output id of the engine's ``identifier_blocked`` for ``identifier``
    (pipeline/engine.py ``blocked_output``: the hash of ``blocked:<identifier>``)."""
    return hashlib.blake2b(f"blocked:{identifier}".encode(), digest_size=8).hexdigest()


# --- reading ------------------------------------------------------------------------------------


def _blocked(client: Client, database: str, identifiers: Iterable[str]) -> set[str]:
    """Which of ``identifiers`` the engine blocked (seen with too many customers)."""
    by_id = {blocked_output_id(i): i for i in identifiers}
    if not by_id:
        return set()
    rows = client.query(
        f"SELECT DISTINCT output_id FROM {database}.journey_events "
        "WHERE journey = '' AND name = 'identifier_blocked' AND type = 'identity' "
        "AND output_id IN {ids:Array(String)}",
        parameters={"ids": sorted(by_id)},
    ).result_rows
    return {by_id[str(row[0])] for row in rows}


def person_of(client: Client, database: str, key: str) -> str | None:
    """The person ``key`` belongs to now: a customer id is its customer's; another identifier
    its latest link's person, followed through the merges that took it into another."""
    if key.startswith(CUSTOMER):
        return "c:" + key[len(CUSTOMER) :]
    person: str | None = None
    wanted, via = key, "linked"
    for _ in range(MAX_ROUNDS * 2):
        rows = client.query(
            f"SELECT person_id FROM {database}.identity_links "
            "WHERE identifier = {i:String} AND via = {via:String} "
            "ORDER BY at DESC, ingested_at DESC LIMIT 1",
            parameters={"i": wanted, "via": via},
        ).result_rows
        if not rows:
            break
        found = str(rows[0][0])
        if found == person or found.startswith("c:"):
            return found
        person, wanted, via = found, found, "merged"
    return person


def read_timeline(
    client: Client,
    database: str,
    key: str,
    max_touchpoints: int = MAX_TOUCHPOINTS,
) -> dict[str, Any]:
    """The timeline of the customer (or anonymous person) ``key`` names; TimelineError 404
    when nobody is known by it."""
    if not key.startswith(CUSTOMER) and _blocked(client, database, [key]):
        raise TimelineError(
            "this identifier is shared by several customers (blocked from stitching): "
            "name the customer by another one",
            status=404,
        )
    person = person_of(client, database, key)
    if person is None:
        raise TimelineError("no customer is known by this identifier", status=404)
    persons: set[str] = {person}
    frontier = [person]
    outputs: list[dict[str, Any]] = []
    cut = False  # more outputs than read (the oldest MAX_OUTPUTS of a person are)
    columns = ", ".join(OUTPUT_COLUMNS)
    for _ in range(MAX_ROUNDS):
        result = client.query(
            f"SELECT {columns} FROM {database}.person_outputs "
            "WHERE person_id IN {p:Array(String)} ORDER BY at, output_id "
            f"LIMIT {MAX_OUTPUTS}",
            parameters={"p": frontier},
        )
        rows = [dict(zip(OUTPUT_COLUMNS, row, strict=True)) for row in result.result_rows]
        outputs += rows
        cut = cut or len(rows) >= MAX_OUTPUTS
        merged_in = {
            str(_detail(r).get("from_person") or "")
            for r in rows
            if r["type"] == "identity" and r["name"] == "merged"
        }
        frontier = sorted(p for p in merged_in - persons if p)
        persons.update(frontier)
        if not frontier or len(persons) > MAX_PERSONS:
            break
    linked = {
        str(_detail(r).get("identifier") or "")
        for r in outputs
        if r["type"] == "identity" and r["name"] == "linked"
    }
    identifiers = {i for i in linked if i} | {person_key(p) for p in persons}
    blocked = _blocked(client, database, identifiers)
    customers = sorted(p[2:] for p in persons if p.startswith("c:"))
    wanted = sorted(identifiers - blocked)
    touch_rows = client.query(
        f"SELECT {', '.join(TOUCHPOINT_COLUMNS)} FROM {database}.touchpoints_by_identifier "
        "WHERE identifier IN {ids:Array(String)} "
        "AND (customer_id = '' OR customer_id IN {customers:Array(String)}) "
        "ORDER BY occurred_at, event_id LIMIT 1 BY event_id "
        f"LIMIT {max_touchpoints + 1}",
        parameters={"ids": wanted, "customers": customers},
    ).result_rows
    touchpoints = [dict(zip(TOUCHPOINT_COLUMNS, row, strict=True)) for row in touch_rows]
    if not outputs and not touchpoints:
        raise TimelineError("no customer is known by this identifier", status=404)
    timeline = assemble(key, person, outputs, touchpoints[:max_touchpoints], blocked)
    timeline["truncated"] = cut or len(touchpoints) > max_touchpoints
    return timeline


# --- assembling (pure) ----------------------------------------------------------------------------


def _detail(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("detail") or ""
    if isinstance(raw, dict):
        return raw
    try:
        parsed = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        text = value.isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z") if value.tzinfo else text + "Z"
    return str(value)


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (int, float)):
        return value
    return float(value)


def _or_none(value: Any) -> Any:
    return value if value not in ("", None) else None


def assemble(
    requested: str,
    person: str,
    outputs: list[dict[str, Any]],
    touchpoints: list[dict[str, Any]],
    blocked: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The timeline from the person's output rows (``OUTPUT_COLUMNS``, duplicates allowed) and
    touchpoint rows (``TOUCHPOINT_COLUMNS``)."""
    unique: dict[str, dict[str, Any]] = {}
    for row in outputs:
        unique[str(row["output_id"])] = row
    retracted = {
        str(_detail(r).get("retracts"))
        for r in unique.values()
        if r["type"] == "journey" and r["name"] == "dropoff_retracted"
    }
    rows = sorted(
        (r for oid, r in unique.items() if oid not in retracted),
        key=lambda r: (r["at"], str(r["output_id"])),
    )
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("event_id"):
            by_event.setdefault(str(r["event_id"]), []).append(r)

    # identity: links and merges
    links = [r for r in rows if r["type"] == "identity" and r["name"] == "linked"]
    first_link: dict[str, dict[str, Any]] = {}
    for r in links:
        first_link.setdefault(str(_detail(r).get("identifier") or ""), r)
    of_person: dict[str, set[str]] = {}
    for r in links:
        of_person.setdefault(str(r["person_id"]), set()).add(str(_detail(r).get("identifier")))
    touch_ids = {str(t["event_id"]): t for t in touchpoints}
    merges = []
    for r in rows:
        if r["type"] != "identity" or r["name"] != "merged":
            continue
        source = str(_detail(r).get("from_person") or "")
        carried = touch_ids.get(str(r.get("event_id") or ""), {}).get("identifiers") or []
        via = sorted(set(carried) & (of_person.get(source, set()) | {person_key(source)}))
        merges.append(
            {
                "at": _iso(r["at"]),
                "from_person": source,
                "into_person": r["person_id"],
                "event_id": _or_none(r.get("event_id")),
                "identifiers": via or [person_key(source)],
            }
        )
    identifiers = [
        {
            "identifier": identifier,
            "kind": identifier.partition(":")[0],
            "person_id": r["person_id"],
            "linked_at": _iso(r["at"]),
            "event_id": _or_none(r.get("event_id")),
            "blocked": identifier in blocked,
        }
        for identifier, r in sorted(first_link.items(), key=lambda kv: (kv[1]["at"], kv[0]))
        if identifier
    ]

    # journeys
    journeys: dict[str, dict[str, Any]] = {}
    for r in rows:
        journey_id = str(r.get("journey_id") or "")
        if not journey_id or r["type"] not in ("journey", "score"):
            continue
        j = journeys.setdefault(
            journey_id,
            {
                "journey_id": journey_id,
                "journey": r["journey"],
                "started_at": None,
                "last_at": None,
                "stages": [],
                "stage": None,
                "outcome": "active",
                "outcome_at": None,
                "score": None,
                "channels": [],
                "_rank": 1,
                "_score_rank": -1,
            },
        )
        at = _iso(r["at"])
        if r["type"] == "score":
            rank = 1 if _detail(r).get("outcome") == "converted" else 0
            if rank >= j["_score_rank"]:
                j["score"], j["_score_rank"] = _number(r.get("value")), rank
            continue
        name = r["name"]
        if name == "started" and j["started_at"] is None:
            j["started_at"] = at
        if j["last_at"] is None or (at or "") > j["last_at"]:
            j["last_at"] = at
        if r.get("channel") and r["channel"] not in j["channels"]:
            j["channels"].append(r["channel"])
        if name in ("started", "stage_reached") and r.get("stage"):
            if r["stage"] not in [s["stage"] for s in j["stages"]]:
                j["stages"].append({"stage": r["stage"], "at": at, "event_id": r.get("event_id")})
            j["stage"] = r["stage"]
        rank = OUTCOME_RANK.get(name, 0)
        if rank >= j["_rank"] and rank:
            j["outcome"], j["outcome_at"], j["_rank"] = name, at, rank
            if r.get("stage") and name in ("converted", "dropped_off"):
                j["stage"] = r["stage"]
    journey_list = []
    for j in sorted(journeys.values(), key=lambda j: (j["started_at"] or "", j["journey_id"])):
        j.pop("_rank")
        j.pop("_score_rank")
        j["channels"] = sorted(j["channels"])
        journey_list.append(j)

    # moments
    negatives = [
        {
            "at": _iso(r["at"]),
            "kind": r["name"],
            "journey": _or_none(r.get("journey")),
            "journey_id": _or_none(r.get("journey_id")),
            "stage": _or_none(r.get("stage")),
            "channel": _or_none(r.get("channel")),
            "touchpoint": _or_none(r.get("touchpoint")),
            "event_id": _or_none(r.get("event_id")),
            "severity": _detail(r).get("severity"),
            "moment_of_truth": _detail(r).get("moment_of_truth"),
        }
        for r in rows
        if r["type"] == "negative_moment"
    ]
    truths = [
        {
            "at": _iso(r["at"]),
            "name": r["name"],
            "passed": bool(_detail(r).get("passed")),
            "journey": _or_none(r.get("journey")),
            "journey_id": _or_none(r.get("journey_id")),
            "stage": _or_none(r.get("stage")),
            "channel": _or_none(r.get("channel")),
            "touchpoint": _or_none(r.get("touchpoint")),
            "event_id": _or_none(r.get("event_id")),
        }
        for r in rows
        if r["type"] == "moment_of_truth"
    ]

    # touchpoints, each with what it did
    touch_list = []
    for t in sorted(touchpoints, key=lambda t: (t["occurred_at"], str(t["event_id"]))):
        did = by_event.get(str(t["event_id"]), [])
        touch_list.append(
            {
                "event_id": t["event_id"],
                "at": _iso(t["occurred_at"]),
                "channel": t["channel"],
                "touchpoint": t["touchpoint"],
                "action": t["action"],
                "outcome": t["outcome"],
                "outcome_reason": _or_none(t.get("outcome_reason")),
                "session_hint": _or_none(t.get("session_hint")),
                "identifiers": sorted(t.get("identifiers") or []),
                "duration_ms": t.get("duration_ms"),
                "wait_ms": t.get("wait_ms"),
                "csat": t.get("csat"),
                "nps": t.get("nps"),
                "sentiment": _number(t.get("sentiment")),
                "revenue": _number(t.get("revenue")),
                "currency": _or_none(t.get("currency")),
                "source": _or_none(t.get("source")),
                "journeys": sorted({str(o["journey_id"]) for o in did if o.get("journey_id")}),
                "negative_moments": sorted(
                    {str(o["name"]) for o in did if o["type"] == "negative_moment"}
                ),
                "moments_of_truth": sorted(
                    {str(o["name"]) for o in did if o["type"] == "moment_of_truth"}
                ),
            }
        )

    customers = sorted({str(p)[2:] for p in (person, *of_person) if str(p).startswith("c:")})
    persons = sorted({person} | {str(r["person_id"]) for r in rows})
    return {
        "identifier": requested,
        "person_id": person,
        "customer_id": person[2:] if person.startswith("c:") else None,
        "persons": persons,
        "identifiers": identifiers,
        "merges": merges,
        "touchpoints": touch_list,
        "journeys": journey_list,
        "negative_moments": negatives,
        "moments_of_truth": truths,
        "kpis": kpis([r for r in rows if r["type"] == "kpi"]),
        "customers": customers,
    }


def kpis(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The person's KPIs from its ``kpi`` outputs: CSAT, NPS, first-contact resolution,
    complaint response, value (purchases' revenue), conversions, and the answers themselves."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_name.setdefault(str(r["name"]), []).append(r)

    def values(name: str) -> list[float]:
        return [
            float(v) for r in by_name.get(name, []) if (v := _number(r.get("value"))) is not None
        ]

    csat = values("csat")
    nps = values("nps")
    fcr = values("first_contact_resolution")
    response = values("complaint_response")
    value = values("ltv_increment")
    promoters = sum(1 for v in nps if v >= 9)
    detractors = sum(1 for v in nps if v <= 6)
    currencies = sorted(
        {str(_detail(r).get("currency")) for r in by_name.get("ltv_increment", [])} - {"None", ""}
    )
    return {
        "csat": {"answers": len(csat), "mean": round(sum(csat) / len(csat), 2) if csat else None},
        "nps": {
            "answers": len(nps),
            "promoters": promoters,
            "passives": len(nps) - promoters - detractors,
            "detractors": detractors,
            "score": round(100 * (promoters - detractors) / len(nps), 1) if nps else None,
        },
        "first_contact_resolution": {
            "cases": len(fcr),
            "resolved": sum(1 for v in fcr if v >= 1),
            "rate": round(sum(1 for v in fcr if v >= 1) / len(fcr), 3) if fcr else None,
        },
        "complaint_response": {
            "responses": len(response),
            "mean_s": round(sum(response) / len(response), 1) if response else None,
            "max_s": max(response) if response else None,
        },
        "value": {
            "purchases": len(value),
            "revenue": round(sum(value), 2),
            "currencies": currencies,
        },
        "conversions": len(by_name.get("conversion", [])),
        "churn_risk": bool(by_name.get("churn_risk")),
        "answers": [
            {
                "at": _iso(r["at"]),
                "kpi": r["name"],
                "value": _number(r.get("value")),
                "journey": _or_none(r.get("journey")),
                "channel": _or_none(r.get("channel")),
                "event_id": _or_none(r.get("event_id")),
            }
            for r in rows
        ],
    }
