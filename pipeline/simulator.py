"""A small, deterministic traffic source of touchpoint events across the four channels.

It keeps a pool of customers, each walking a short scripted path (browse on the web or the
app, add to cart, pay, sometimes fail and call the contact centre, sometimes buy in a store),
and hands out their next touchpoint on request. Event time is given by the caller, so the
same seed and the same clock give the same events.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.touch import Touch

Step = tuple[str, str, str, str, str | None]  # channel, touchpoint, action, outcome, reason

_ONLINE_BUY: tuple[Step, ...] = (
    ("web", "home.view", "view", "ok", None),
    ("web", "product.view", "view", "ok", None),
    ("web", "cart.add", "add", "ok", None),
    ("web", "checkout.payment", "submit", "ok", None),
    ("web", "checkout.confirmation", "view", "ok", None),
)
_PAYMENT_FAILS_THEN_CALL: tuple[Step, ...] = (
    ("app", "product.view", "view", "ok", None),
    ("app", "cart.add", "add", "ok", None),
    ("app", "checkout.payment", "submit", "error", "payment_declined"),
    ("call_center", "ivr.menu", "select", "ok", None),
    ("call_center", "queue.wait", "wait", "ok", None),
    ("call_center", "agent.talk", "resolve", "ok", None),
)
_BROWSE_BUY_IN_STORE: tuple[Step, ...] = (
    ("web", "product.view", "view", "ok", None),
    ("store", "store.visit", "enter", "ok", None),
    ("store", "till.purchase", "pay", "ok", None),
)
_BROWSER_LEAVES: tuple[Step, ...] = (
    ("web", "home.view", "view", "ok", None),
    ("web", "product.view", "view", "ok", None),
)
_PATHS = (_ONLINE_BUY, _PAYMENT_FAILS_THEN_CALL, _BROWSE_BUY_IN_STORE, _BROWSER_LEAVES)
_PATH_WEIGHTS = (4, 1, 2, 5)


@dataclass
class _Walker:
    customer_id: str
    device_id: str
    path: tuple[Step, ...]
    position: int = 0
    loyalty_id: str | None = None


class SimpleTrafficSource:
    """Endless mixed-channel traffic from a pool of concurrently active customers."""

    def __init__(self, seed: int = 1, concurrent_customers: int = 200) -> None:
        self._rng = random.Random(seed)
        self._uuid_rng = random.Random(seed ^ 0x5EED)
        self._pool_size = concurrent_customers
        self._walkers: list[_Walker] = []
        self._started = 0

    def _new_walker(self) -> _Walker:
        self._started += 1
        path = self._rng.choices(_PATHS, _PATH_WEIGHTS)[0]
        number = self._started
        return _Walker(
            customer_id=f"c{number:08d}",
            device_id=f"d{number:08d}",
            path=path,
            loyalty_id=f"L{number:08d}" if path is _BROWSE_BUY_IN_STORE else None,
        )

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4))

    def next_event(self, now: datetime) -> dict[str, Any]:
        """The next touchpoint of some active customer, stamped ``now``."""
        while len(self._walkers) < self._pool_size:
            self._walkers.append(self._new_walker())
        index = self._rng.randrange(len(self._walkers))
        walker = self._walkers[index]
        channel, touchpoint, action, outcome, reason = walker.path[walker.position]
        walker.position += 1
        if walker.position >= len(walker.path):
            self._walkers[index] = self._new_walker()
        event: dict[str, Any] = {
            "event_id": self._event_id(),
            "occurred_at": now.isoformat(),
            "channel": channel,
            "touchpoint": touchpoint,
            "action": action,
            "outcome": outcome,
            "source": "simulator",
        }
        if reason:
            event["outcome_reason"] = reason
        if channel in ("web", "app"):
            event["device_id"] = walker.device_id
            if touchpoint.startswith(("cart.", "checkout.")):
                event["customer_id"] = walker.customer_id
            event["duration_ms"] = self._rng.randint(200, 4000)
        elif channel == "call_center":
            event["customer_id"] = walker.customer_id
            if touchpoint == "queue.wait":
                event["wait_ms"] = self._rng.randint(5_000, 600_000)
            if action == "resolve":
                event["csat"] = self._rng.randint(1, 5)
        else:
            event["loyalty_id"] = walker.loyalty_id or walker.customer_id
            if action == "pay":
                event["revenue"] = f"{self._rng.randint(5, 300)}.{self._rng.randint(0, 99):02d}"
                event["currency"] = "EUR"
        if touchpoint == "checkout.payment" and outcome == "ok":
            event["revenue"] = f"{self._rng.randint(10, 500)}.00"
            event["currency"] = "EUR"
        return event

    def events(self, now: datetime, count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            yield self.next_event(now)


# (channel, touchpoint, action) steps of a persona walking one of the default journeys.
JOURNEY_SCRIPTS: tuple[tuple[tuple[str, str, str], ...], ...] = (
    (
        ("web", "home.view", "view"),
        ("web", "product.view", "view"),
        ("web", "cart.add", "add"),
        ("web", "checkout.payment", "submit"),
        ("web", "checkout.confirmation", "view"),
    ),
    (
        ("app", "product.view", "view"),
        ("app", "cart.add", "add"),
        ("app", "checkout.payment", "submit"),
        ("call_center", "ivr.menu", "select"),
        ("call_center", "queue.wait", "wait"),
        ("call_center", "agent.talk", "resolve"),
    ),
    (
        ("web", "store_locator.search", "view"),
        ("store", "store.visit", "enter"),
        ("store", "till.purchase", "pay"),
    ),
    (
        ("app", "app.install", "install"),
        ("app", "onboarding.signup", "submit"),
        ("app", "onboarding.profile", "submit"),
        ("app", "onboarding.completed", "view"),
    ),
    (("web", "home.view", "view"), ("web", "product.view", "view")),  # a browser who leaves
)


def scripted_touches(
    seed: int,
    *,
    t0: int,
    personas: int | None = None,
    events: int | None = None,
    start_spread_ms: int = 2 * 3_600_000,
    gaps_ms: tuple[int, ...] = (15_000, 60_000, 240_000, 1_500_000),
    error_rate: float = 0.05,
    customer_share: float = 0.5,
    csat_rate: float = 0.0,
) -> list[tuple[int, Touch]]:
    """(persona, touch) pairs in event-time order: personas walking the default journeys,
    each stopping at a random step, anonymous on the web and the app until they identify
    themselves (from the third step, or in a call or a store), with random failures.

    Stops after ``personas`` personas or ``events`` touches, whichever is given.
    """
    rng = random.Random(seed)
    stream: list[tuple[int, Touch]] = []
    persona = 0
    while (personas is None or persona < personas) and (events is None or len(stream) < events):
        script = rng.choice(JOURNEY_SCRIPTS)
        at = t0 + rng.randrange(start_spread_ms)
        customer = f"c{persona}" if rng.random() < customer_share else None
        for index, (channel, touchpoint, action) in enumerate(
            script[: rng.randint(1, len(script))]
        ):
            at += rng.choice(gaps_ms)
            identifiers: tuple[tuple[str, str], ...] = (("device_id", f"d{persona}"),)
            if customer and (index >= 2 or channel in ("call_center", "store")):
                identifiers = (("customer_id", customer), *identifiers)
            csat = rng.randint(1, 5) if action == "resolve" or rng.random() < csat_rate else None
            stream.append(
                (
                    persona,
                    Touch(
                        f"p{persona}-{index}",
                        at,
                        channel,
                        touchpoint,
                        action,
                        "error" if rng.random() < error_rate else "ok",
                        identifiers=identifiers,
                        # one call id for the persona's call (a call is one contact)
                        session_hint=f"s{persona}" if channel == "call_center" else None,
                        duration_ms=rng.randint(100, 6_000) if channel in ("web", "app") else None,
                        wait_ms=rng.choice((30_000, 900_000))
                        if touchpoint == "queue.wait"
                        else None,
                        csat=csat,
                    ),
                )
            )
        persona += 1
    stream.sort(key=lambda item: (item[1].at, item[1].event_id))
    return stream[:events] if events is not None else stream
