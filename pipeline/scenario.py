"""A simulated day of customers across the four channels, with its ground truth.

Personas (browsers who leave, buyers, omnichannel shoppers, support seekers, repeat
complainers, app onboarders) walk the default journeys with realistic timings, arriving along a
daily traffic curve. Incidents (a payment provider outage, an app release that crashes at
checkout, an understaffed call centre, a store stock-out) change what happens to the personas
they hit. Because the simulator decides every outcome, it also writes down the truth: every
journey's outcome and stage, every negative moment, every identity link. Tests and benchmarks
compare what journeywatch finds with it.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

SECOND: Final = 1_000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
KIOSKS: Final = 3  # shared store kiosks customers sign in at (_omnichannel_shopper)
DAY: Final = 24 * HOUR

INCIDENT_KINDS: Final = (
    "payment_outage",
    "app_checkout_crash",
    "call_centre_understaffed",
    "store_stockout",
)


@dataclass(frozen=True)
class Incident:
    kind: str
    start: int  # epoch ms
    end: int

    def active(self, at: int) -> bool:
        return self.start <= at < self.end


@dataclass
class TruthJourney:
    """What really happened in one journey, as the engine should report it."""

    journey: str
    person: str  # the person id the engine should end with (c:<customer> or a:<identifier>)
    outcome: str  # converted | dropped_off
    stage: str
    negative_moments: list[str] = field(default_factory=list)
    started_at: int | None = None  # epoch ms of the journey's first touchpoint
    converted_at: int | None = None  # epoch ms of the touchpoint that reached the goal

    def as_dict(self) -> dict[str, Any]:
        return {
            "journey": self.journey,
            "person": self.person,
            "outcome": self.outcome,
            "stage": self.stage,
            "negative_moments": sorted(self.negative_moments),
        }


@dataclass
class GroundTruth:
    journeys: list[TruthJourney] = field(default_factory=list)
    identity_links: list[tuple[str, str]] = field(default_factory=list)  # (identifier, person)


class _Persona:
    """Builds one persona's events; records its truth."""

    def __init__(self, sim: DaySimulator, number: int, start: int) -> None:
        self.sim = sim
        self.rng = sim.rng
        self.at = start
        self.device = f"dev-{number:06d}"
        self.customer = f"cus-{number:06d}"
        self.loyalty = f"loy-{number:06d}"
        self.events: list[dict[str, Any]] = []

    def wait(self, low_ms: int, high_ms: int) -> None:
        self.at += self.rng.randint(low_ms, high_ms)

    def touch(
        self,
        channel: str,
        touchpoint: str,
        action: str,
        *,
        rng: random.Random | None = None,
        at: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """One touchpoint now (or ``at``), its id drawn from ``rng`` (default the day's)."""
        rng = rng or self.rng
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "occurred_at": datetime.fromtimestamp((at or self.at) / 1000, UTC).isoformat(),
            "channel": channel,
            "touchpoint": touchpoint,
            "action": action,
            "source": "simulator",
        }
        if channel in ("web", "app") and "duration_ms" not in fields:
            fields["duration_ms"] = rng.randint(150, 3_000)
        event.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(event)
        return event

    def journey(
        self,
        name: str,
        person: str,
        outcome: str,
        stage: str,
        *moments: str,
        started_at: int | None = None,
    ) -> None:
        """Record a finished journey; a converted one reaches its goal now (``self.at``) and
        started at ``started_at`` (default: the persona's first touchpoint)."""
        if outcome == "converted":
            first = started_at if started_at is not None else self.first_at
            truth = TruthJourney(name, person, outcome, stage, list(moments), first, self.at)
        else:
            truth = TruthJourney(name, person, outcome, stage, list(moments))
        self.sim.truth.journeys.append(truth)

    @property
    def first_at(self) -> int:
        return int(datetime.fromisoformat(self.events[0]["occurred_at"]).timestamp() * 1000)

    def link(self, identifier: str, person: str) -> None:
        self.sim.truth.identity_links.append((identifier, person))


def _browser_who_leaves(p: _Persona) -> None:
    channel = p.rng.choice(("web", "app"))
    p.touch(channel, "home.view", "view", device_id=p.device)
    p.wait(20 * SECOND, 3 * MINUTE)
    p.touch(channel, "product.view", "view", device_id=p.device)
    stage = "consideration"
    if p.rng.random() < 0.4:
        p.wait(20 * SECOND, 3 * MINUTE)
        p.touch(channel, "cart.add", "add", device_id=p.device)
        stage = "cart"
    p.journey("online_purchase", f"a:device_id:{p.device}", "dropped_off", stage)


def _buyer(p: _Persona) -> None:
    channel = p.rng.choice(("web", "web", "app"))
    person = f"c:{p.customer}"
    p.touch(channel, "home.view", "view", device_id=p.device)
    p.wait(20 * SECOND, 2 * MINUTE)
    p.touch(channel, "product.view", "view", device_id=p.device)
    p.wait(20 * SECOND, 2 * MINUTE)
    p.touch(channel, "cart.add", "add", customer_id=p.customer, device_id=p.device)
    p.link(f"device_id:{p.device}", person)
    p.wait(30 * SECOND, 3 * MINUTE)
    failure = p.sim.payment_failure(channel, p.at)
    if failure is None:
        p.touch(
            channel,
            "checkout.payment",
            "submit",
            customer_id=p.customer,
            revenue="59.90",
            currency="EUR",
        )
        p.wait(2 * SECOND, 10 * SECOND)
        p.touch(channel, "checkout.confirmation", "view", customer_id=p.customer)
        p.journey("online_purchase", person, "converted", "payment")
        return
    p.touch(
        channel,
        "checkout.payment",
        "submit",
        customer_id=p.customer,
        outcome="error",
        outcome_reason=failure,
    )
    if p.rng.random() < 0.5:  # calls the contact centre about it, within minutes
        p.journey("online_purchase", person, "dropped_off", "payment", "error")
        p.wait(3 * MINUTE, 20 * MINUTE)
        _call(p, person, issue="payment", extra_moments=("channel_switch_after_failure",))
    else:
        p.journey("online_purchase", person, "dropped_off", "payment", "error")


def _call(
    p: _Persona,
    person: str,
    issue: str,
    extra_moments: tuple[str, ...] = (),
    started_at: int | None = None,
) -> None:
    """One call: IVR, queue, agent; records the support_case journey it makes (started at the
    call, or at ``started_at`` when an earlier contact opened the case)."""
    hint = f"call-{p.events[-1]['event_id'][:8] if p.events else p.customer}"
    moments = list(extra_moments)

    def in_call(touchpoint: str, action: str, **fields: Any) -> None:
        p.touch(
            "call_center",
            touchpoint,
            action,
            customer_id=p.customer,
            session_hint=hint,
            attributes={"issue": issue},
            **fields,
        )

    opened = started_at if started_at is not None else p.at
    in_call("ivr.menu", "select")
    p.wait(10 * SECOND, 40 * SECOND)
    understaffed = p.sim.incident_active("call_centre_understaffed", p.at)
    wait_ms = (
        p.rng.randint(11 * MINUTE, 25 * MINUTE)
        if understaffed
        else p.rng.randint(20 * SECOND, 3 * MINUTE)
    )
    if understaffed and p.rng.random() < 0.4:
        in_call(
            "queue.wait",
            "wait",
            wait_ms=wait_ms,
            outcome="abandoned",
            outcome_reason="caller_hung_up",
        )
        moments += ["long_wait", "call_abandoned"]
        p.journey("support_case", person, "dropped_off", "diagnosis", *moments)
        return
    in_call("queue.wait", "wait", wait_ms=wait_ms)
    if understaffed:
        moments.append("long_wait")
    p.at += wait_ms
    csat = p.rng.choice((1, 2, 4, 5, 5)) if not understaffed else p.rng.choice((1, 2, 3))
    if csat <= 2:
        moments.append("low_csat")
    # Half the callers also answer the NPS question of the post-call survey, in line with
    # their CSAT. Drawn from the call's own generator, so that the rest of the day (and every
    # test that relies on it) stays the same with or without the question.
    survey = random.Random(f"nps:{hint}")
    nps = None
    if survey.random() < 0.5:
        nps = survey.randint(0, 6) if csat <= 2 else survey.choice((6, 7, 8, 9, 9, 10, 10))
        if nps <= 6:
            moments.append("nps_detractor")
    # The agent talks for 2 to 25 minutes (duration_ms), then wraps the call up: many calls
    # last longer than the call centre's 15-minute session gap, and the wrap-up leg of half
    # of them carries no call id. Each is still one contact (no repeat_contact, first-contact
    # resolution kept). Drawn from the call's own generator, like the survey.
    talk = survey.randint(2 * MINUTE, 25 * MINUTE)
    in_call("agent.talk", "resolve", csat=csat, nps=nps, duration_ms=talk)
    p.journey("support_case", person, "converted", "diagnosis", *moments, started_at=opened)
    p.at += talk + survey.randint(30 * SECOND, 3 * MINUTE)
    wrap_up: dict[str, Any] = {"customer_id": p.customer, "attributes": {"issue": issue}}
    if survey.random() < 0.5:
        wrap_up["session_hint"] = hint
    p.touch("call_center", "call.wrap_up", "wrap_up", **wrap_up)


def _support_seeker(p: _Persona) -> None:
    _call(p, f"c:{p.customer}", issue=p.rng.choice(("billing", "delivery", "account")))


def _repeat_complainer(p: _Persona) -> None:
    person = f"c:{p.customer}"
    p.touch(
        "email",
        "support.contact",
        "complain",
        customer_id=p.customer,
        attributes={"issue": "delivery"},
    )
    p.wait(2 * HOUR, 20 * HOUR)  # calls again the same day: the e-mail did not solve it
    _call(
        p,
        person,
        issue="delivery",
        extra_moments=("complaint", "repeat_contact"),
        started_at=p.first_at,  # the e-mail opened the case
    )


def _omnichannel_shopper(p: _Persona) -> None:
    person = f"c:{p.customer}"
    p.touch("web", "store_locator.search", "search", device_id=p.device)
    p.wait(2 * MINUTE, 20 * MINUTE)
    p.touch("app", "account.login", "login", customer_id=p.customer, device_id=p.device)
    p.link(f"device_id:{p.device}", person)
    p.wait(10 * SECOND, 2 * MINUTE)
    p.touch("app", "profile.view", "view", customer_id=p.customer, loyalty_id=p.loyalty)
    p.link(f"loyalty_id:{p.loyalty}", person)
    p.wait(2 * HOUR, 2 * DAY)
    p.touch(
        "store", "store.visit", "enter", loyalty_id=p.loyalty, session_hint=f"visit-{p.loyalty}"
    )
    kiosk = p.sim.kiosks
    if kiosk.random() < 0.5:  # signs in at one of the store's shared kiosks (a second rng:
        # the rest of the day is what it was without kiosks)
        p.touch(
            "store",
            "product.store_availability",
            "search",
            rng=kiosk,
            at=p.at + MINUTE,
            customer_id=p.customer,
            loyalty_id=p.loyalty,
            device_id=f"kiosk-{kiosk.randint(1, KIOSKS)}",
            session_hint=f"visit-{p.loyalty}",
        )
    p.wait(5 * MINUTE, 30 * MINUTE)
    if p.sim.incident_active("store_stockout", p.at):
        p.touch(
            "store",
            "product.stock_check",
            "check",
            loyalty_id=p.loyalty,
            outcome="error",
            outcome_reason="out_of_stock",
            session_hint=f"visit-{p.loyalty}",
        )
        p.journey("browse_online_buy_in_store", person, "dropped_off", "store_visit", "error")
        return
    p.touch(
        "store",
        "till.purchase",
        "pay",
        loyalty_id=p.loyalty,
        revenue="129.00",
        currency="EUR",
        session_hint=f"visit-{p.loyalty}",
    )
    p.journey("browse_online_buy_in_store", person, "converted", "store_visit")


def _app_onboarder(p: _Persona) -> None:
    person = f"a:device_id:{p.device}"
    p.touch("app", "app.install", "install", device_id=p.device)
    p.wait(30 * SECOND, 5 * MINUTE)
    if p.rng.random() < 0.3:
        p.touch(
            "app",
            "onboarding.signup",
            "submit",
            device_id=p.device,
            outcome="error",
            outcome_reason="sms_not_received",
        )
        p.journey("app_onboarding", person, "dropped_off", "signup", "error")
        return
    p.touch("app", "onboarding.signup", "submit", device_id=p.device)
    p.wait(30 * SECOND, 5 * MINUTE)
    p.touch("app", "onboarding.profile", "submit", device_id=p.device)
    p.wait(30 * SECOND, 5 * MINUTE)
    p.touch("app", "onboarding.completed", "view", device_id=p.device)
    p.journey("app_onboarding", person, "converted", "setup")


PERSONAS: Final[dict[str, tuple[Callable[[_Persona], None], int]]] = {
    # name: (script, weight)
    "browser_who_leaves": (_browser_who_leaves, 30),
    "buyer": (_buyer, 25),
    "omnichannel_shopper": (_omnichannel_shopper, 10),
    "support_seeker": (_support_seeker, 15),
    "repeat_complainer": (_repeat_complainer, 5),
    "app_onboarder": (_app_onboarder, 15),
}


def traffic_curve(hour: float) -> float:
    """Relative arrival rate by hour of day: quiet at night, peaks at noon and in the evening."""
    return 0.15 + math.exp(-((hour - 12.5) ** 2) / 8) + 1.2 * math.exp(-((hour - 20.5) ** 2) / 6)


class DaySimulator:
    """``personas`` customers starting across one day from ``start`` (epoch ms, midnight UTC)."""

    def __init__(
        self, seed: int, start: int, personas: int, incidents: list[Incident] | None = None
    ) -> None:
        self.rng = random.Random(seed)
        self.kiosks = random.Random(seed + 1)  # shared store kiosks (_omnichannel_shopper)
        self.start = start
        self.personas = personas
        self.incidents = incidents or []
        self.truth = GroundTruth()

    def incident_active(self, kind: str, at: int) -> bool:
        return any(i.kind == kind and i.active(at) for i in self.incidents)

    def payment_failure(self, channel: str, at: int) -> str | None:
        if self.incident_active("payment_outage", at) and self.rng.random() < 0.8:
            return "provider_unavailable"
        if channel == "app" and self.incident_active("app_checkout_crash", at):
            return "app_crash"
        return None

    def _start_time(self) -> int:
        while True:  # rejection sampling along the daily curve
            hour = self.rng.uniform(0, 24)
            if self.rng.uniform(0, 2.4) <= traffic_curve(hour):
                return self.start + int(hour * HOUR)

    def generate(self) -> list[dict[str, Any]]:
        """Every event of the day, in event-time order (the truth is in ``self.truth``)."""
        names = list(PERSONAS)
        weights = [PERSONAS[n][1] for n in names]
        events: list[dict[str, Any]] = []
        for number in range(self.personas):
            script = PERSONAS[self.rng.choices(names, weights)[0]][0]
            persona = _Persona(self, number, self._start_time())
            script(persona)
            events.extend(persona.events)
        events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
        return events


def default_incidents(start: int) -> list[Incident]:
    """All four incident scenarios, at different times of the simulated day."""
    return [
        Incident("payment_outage", start + 11 * HOUR, start + 12 * HOUR),
        Incident("app_checkout_crash", start + 14 * HOUR, start + 16 * HOUR),
        Incident("call_centre_understaffed", start + 17 * HOUR, start + 19 * HOUR),
        Incident("store_stockout", start + 9 * HOUR, start + 72 * HOUR),
    ]
