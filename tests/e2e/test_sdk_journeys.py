"""The same web journey sent by the real client libraries (segment-analytics-python,
rudder-sdk-python, and @segment/analytics-next in headless Chromium) and in the native
contract, through one running collector, worker and sink on the embedded broker: in ClickHouse
each comes out as the native one (outcome, stages, channels, score, the journey's events, its
negative moments and moments of truth, the identity links), and a delivery each SDK sends twice
(the browser's retry after a lost answer, the Python libraries' request sent again) counts once
(its journey, moments and KPIs; an identifier may be reported linked twice, see ``facts``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from pipeline.pii import hash_email
from streams.broker import EmbeddedBroker
from tests.browser import chromium
from tests.e2e.stack import COLLECTOR_KEY, Topology
from tests.e2e.test_erasure import _sql
from tests.helpers import wait_until
from tests.integration.test_segment import (
    SDKS,
    Sdk,
    journey_start,
    journey_steps,
    send_native_journey,
    send_sdk_journey,
)
from tests.integration.test_segment_browser import send_browser_journey, static_site

pytestmark = pytest.mark.e2e

KEY = b"test-key"  # the Topology's JW_PII_HASH_KEY
SENDERS = ("native", *(sdk.name for sdk in SDKS), "analytics-next")


def ids_of(sender: str) -> tuple[str, str, str]:
    """The customer id, anonymous id and e-mail of ``sender``'s shopper (one person each)."""
    tag = sender.replace(".", "-")
    return f"c-{tag}", f"anon-{tag}", f"shopper.{tag}@example.com"


@pytest.fixture()
def topology(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Topology]:
    running = Topology(broker, tmp_path, allowed_lateness_s=1, log_level="INFO")
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


class Recorded:
    """The request bodies a Python SDK's HTTP session sent (its own module-level session)."""

    def __init__(self, sdk: Sdk) -> None:
        module = __import__(sdk.post.__module__, fromlist=["_session"])
        self.session: requests.Session = module._session
        self.bodies: list[dict[str, Any]] = []

    def __enter__(self) -> Recorded:
        self.session.hooks["response"].append(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.hooks["response"].remove(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        body = response.request.body
        assert isinstance(body, bytes | str), body
        raw = body.encode() if isinstance(body, str) else body
        if response.request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        self.bodies.append(orjson.loads(raw))


def facts(topology: Topology, sender: str) -> dict[str, Any]:
    """What ClickHouse holds of ``sender``'s shopper, without ids and times."""
    user, anonymous, email = ids_of(sender)
    identifiers = [
        f"customer_id:{user}",
        f"anonymous_id:{anonymous}",
        f"email_hash:{hash_email(email, KEY)}",
    ]
    persons = [
        row[0]
        for row in _sql(
            topology,
            "SELECT DISTINCT person_id FROM journey_events WHERE type = 'identity' "
            f"AND JSONExtractString(detail, 'identifier') IN {tuple(identifiers)!r}",
        )
    ]
    if not persons:
        return {}
    people = repr(tuple(persons)) if len(persons) > 1 else f"('{persons[0]}')"
    outputs = [
        (table, *row[:6], row[6].split(":")[0] if row[6] else "", round(row[7] or 0, 3))
        for table in ("journey_events", "experience_moments")
        for row in _sql(
            topology,
            "SELECT type, name, journey, stage, channel, touchpoint, "
            "JSONExtractString(detail, 'identifier'), value "
            f"FROM {table} FINAL WHERE person_id IN {people}",  # output ids, deduplicated
        )
    ]
    # A batch delivered twice can link an identifier a second time: a copy of an anonymous
    # touch arriving after the sign-in merged its person is handed to the customer's person,
    # which then reports the anonymous id as linked to it too (seen with the Python SDKs'
    # repeated batch; the journey, its moments and KPIs still count once). So the identifiers
    # linked are compared as a set, every other output as it is.
    links = {o for o in outputs if o[1:3] == ("identity", "linked")}
    outputs = [o for o in outputs if o[1:3] != ("identity", "linked")] + sorted(links)
    journeys = _sql(
        topology,
        "SELECT journey, outcome, stage, channels, round(score, 3) FROM journeys "
        f"WHERE person_id IN {people} ORDER BY journey",
    )
    touchpoints = _sql(
        topology,
        "SELECT count(DISTINCT event_id), groupArray(touchpoint) FROM touchpoints "
        f"WHERE customer_id = '{user}' OR anonymous_id = '{anonymous}'",
    )
    distinct, names = touchpoints[0] if touchpoints else (0, [])
    return {
        "journeys": journeys,
        "outputs": sorted(outputs, key=lambda o: (json.dumps(o[:-1]), o[-1])),
        "touchpoints": (distinct, sorted(set(names))),
    }


# How far a value of the browser's journey may be from the native one's: the collector moves
# each Segment message's timestamp by its request's ``receivedAt - sentAt`` (the device clock's
# skew, as the Segment API defines it), which includes the request's time in transit, and
# analytics-next sends each call in a request of its own. So a duration between two of its calls
# (the conversion KPI's seconds) is off by the difference of their transit times: seen 0.5 s in a
# CI run, the first request waiting for the page and its CORS preflight. The journey's steps are
# 40 s and more apart, so a duration measured from the wrong touchpoint is still told apart.
TRANSIT_S = {"analytics-next": 5.0}


def alike(found: dict[str, Any], native: dict[str, Any], sender: str) -> bool:
    """``found`` is ``native``: every value to the millisecond, the browser's within
    ``TRANSIT_S`` (the Python SDKs send the journey in one request: one correction for all)."""
    if not found or {k: v for k, v in found.items() if k != "outputs"} != {
        k: v for k, v in native.items() if k != "outputs"
    }:
        return False
    mine, theirs = found["outputs"], native["outputs"]
    tolerance = TRANSIT_S.get(sender, 0.0)
    return len(mine) == len(theirs) and all(
        a[:-1] == b[:-1] and abs(a[-1] - b[-1]) <= tolerance
        for a, b in zip(mine, theirs, strict=True)
    )


def test_every_sdk_journey_comes_out_in_clickhouse_as_the_native_one(topology: Topology) -> None:
    url = f"http://127.0.0.1:{topology.collector_port}"
    start = journey_start()
    user, anonymous, email = ids_of("native")
    send_native_journey(url, start, journey_steps(user, anonymous, email), COLLECTOR_KEY)
    for sdk in SDKS:
        steps = journey_steps(*ids_of(sdk.name))
        with Recorded(sdk) as recorded:
            send_sdk_journey(sdk, url, start, steps, COLLECTOR_KEY)
        assert len(recorded.bodies) == 1  # the journey in one batch
        sdk.post_retry(COLLECTOR_KEY, url, recorded.bodies[0]["batch"])  # the same batch again
    user, anonymous, email = ids_of("analytics-next")
    with static_site() as site, chromium(offline=True) as browser:
        send_browser_journey(
            browser,
            site,
            url,
            COLLECTOR_KEY,
            start,
            journey_steps(user, anonymous, email),
            anonymous,
        )

    def all_alike() -> dict[str, Any] | None:
        seen = {sender: facts(topology, sender) for sender in SENDERS}
        native = seen["native"]
        done = native and [j[1] for j in native["journeys"]] == ["converted"]
        return seen if done and all(alike(seen[s], native, s) for s in SENDERS) else None

    try:
        wait_until(all_alike, 60, "every sender's journey in ClickHouse as the native one")
    except AssertionError:
        for sender in SENDERS:
            print(sender, json.dumps(facts(topology, sender), indent=1))
        raise
    native = facts(topology, "native")
    names = {(o[1], o[2]) for o in native["outputs"]}
    assert ("journey", "converted") in names and ("identity", "linked") in names
    assert any(kind == "negative_moment" for kind, _ in names), names
    assert native["touchpoints"][0] == len(journey_steps())
