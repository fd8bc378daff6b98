"""The actions agent: the journeys file's ``actions:`` (pipeline/actions.py) delivered as webhooks.

A role of its own (``journeywatch actions run``), so it scales, and is turned off
(``JW_ACTIONS_ENABLED=false``), apart from the workers. Two agents in one Faust app:

* **route**: reads ``journey.events`` and ``experience.moments`` (keyed by journey), keeps the
  outputs a rule may act on (and, when a rule has ``min_value``, the customers' revenue), and
  sends them to ``actions.triggers`` keyed by person, so one customer's triggers meet on one
  partition: the per-customer limit needs them together.
* **deliver**: reads ``actions.triggers``; per trigger and rule, unless the customer's record
  in the ``action_state`` table (pipeline/actions.py, "what the actions agent remembers") says
  it was done already (a restart reads uncommitted triggers again) or the customer had this
  rule's action within ``at_most_once_per``: POSTs the rendered body with the
  trigger's ``output_id:rule`` as ``Idempotency-Key``; retries 5xx, 408, 429, time-outs and
  refused connections with doubling waits; another 4xx, or tries exhausted, goes to
  ``actions.dlq`` with the reason (stored by the sink in ``action_failures``). The outcome is
  written to the table and its changelog record flushed to the broker before the next trigger:
  a crash after that never delivers it again. (A crash between the receiver's answer and that
  flush, a few milliseconds, delivers it again with the same Idempotency-Key: a receiver that
  deduplicates on it, as help desks and CRMs do, sees it once; docs/actions.md.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import faust
import orjson

from pipeline import actions as act
from pipeline.definitions import JourneyCatalog
from pipeline.settings import Settings
from sinks.metrics import ACTION_ATTEMPTS, ACTION_DELIVERIES, ACTION_LATENCY
from streams.app import Readiness
from streams.topics import EXPERIENCE_MOMENTS, JOURNEY_EVENTS, changelog_topic

log = logging.getLogger(__name__)

APP_ID = "journeywatch-actions"
ACTION_TRIGGERS = "actions.triggers"  # outputs a rule may act on, keyed by person
ACTIONS_DLQ = "actions.dlq"  # undeliverable actions, with the reason (sink: action_failures)
STATE_TABLE = "action_state"
RESULTS = ("delivered", "dead_lettered", "limited", "duplicate", "below_value", "stale")
USER_AGENT = "journeywatch-actions"
MAX_ANSWER_CHARS = 500


def action_topics() -> tuple[str, ...]:
    """The topics the actions role reads and writes (before the prefix), its changelog too."""
    return (
        JOURNEY_EVENTS,
        EXPERIENCE_MOMENTS,
        ACTION_TRIGGERS,
        ACTIONS_DLQ,
        changelog_topic(APP_ID, STATE_TABLE),
    )


@dataclass(frozen=True)
class Delivery:
    """What became of one action: delivered (2xx), or undeliverable with the reason."""

    ok: bool
    status: int | None
    attempts: int
    reason: str  # "" when delivered; http_<status>, retries_exhausted
    answer: str  # the receiver's answer (cut), or the error


async def deliver(
    session: aiohttp.ClientSession,
    action: act.Action,
    output: dict[str, Any],
    url: str,
    headers: dict[str, str],
    settings: Settings,
) -> Delivery:
    """POST ``action``'s body for ``output``; retried with doubling waits while retryable."""
    key = act.idempotency_key(str(output.get("output_id")), action.name)
    body = orjson.dumps(act.render_body(action, output))
    sent = {
        **headers,
        "Content-Type": "application/json",
        "Idempotency-Key": key,
        "User-Agent": USER_AGENT,
    }
    timeout = aiohttp.ClientTimeout(total=action.webhook.timeout / 1000)
    attempt = 0
    while True:
        attempt += 1
        status: int | None = None
        try:
            async with session.post(
                url, data=body, headers=sent, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                answer = (await response.text(errors="replace"))[:MAX_ANSWER_CHARS]
        except TimeoutError:
            answer = f"no answer within {action.webhook.timeout / 1000:g} s"
        except aiohttp.ClientError as exc:  # (its text may quote the URL: shown, not as is)
            text = str(exc).replace(url, act.shown_url(action))
            answer = f"{type(exc).__name__}: {text}"[:MAX_ANSWER_CHARS]
        if status is not None and 200 <= status < 300:
            ACTION_ATTEMPTS.labels(action.name, "ok").inc()
            return Delivery(True, status, attempt, "", answer)
        if not act.retryable(status):
            ACTION_ATTEMPTS.labels(action.name, "refused").inc()
            return Delivery(False, status, attempt, f"http_{status}", answer)
        if attempt >= settings.action_max_attempts:
            ACTION_ATTEMPTS.labels(action.name, "failed").inc()
            return Delivery(False, status, attempt, "retries_exhausted", answer)
        ACTION_ATTEMPTS.labels(action.name, "retried").inc()
        wait = act.backoff_s(attempt, settings.action_retry_initial_s, settings.action_retry_max_s)
        log.warning(
            "action webhook failed; trying again",
            extra={
                "rule": action.name,
                "url": act.shown_url(action),
                "status": status,
                "attempt": attempt,
                "retry_in_s": wait,
                "answer": answer[:200],
            },
        )
        await asyncio.sleep(wait)  # the back-off itself, not a synchronisation


def _output_of(raw: Any) -> dict[str, Any] | None:
    """A journey output (or trigger) record, or None for one that is not (logged, skipped: bad
    input never stops the agent)."""
    try:
        output = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        output = None
    if (
        isinstance(output, dict)
        and isinstance(output.get("output_id"), str)
        and isinstance(output.get("person_id"), str)
        and isinstance(output.get("at"), int)
    ):
        return output
    log.error("not a journey output: skipped", extra={"record": repr(raw)[:200]})
    return None


class ActionsRole:
    """The route and deliver agents, the ``action_state`` table and the HTTP session."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        readiness: Readiness,
        catalog: JourneyCatalog,
    ) -> None:
        self.app = app
        self.settings = settings
        self.readiness = readiness
        self.actions = catalog.actions
        self.by_name = {action.name: action for action in self.actions}
        secrets = {k: v.get_secret_value() for k, v in settings.action_secrets.items()}
        # every secret checked at start-up: a missing one stops the role, naming the entry
        self.headers = {a.name: act.resolve_headers(a, secrets) for a in self.actions}
        self.urls = {a.name: act.resolve_url(a, secrets) for a in self.actions}
        self.values_needed = any(a.for_.min_value is not None for a in self.actions)
        self.table = app.Table(STATE_TABLE, partitions=settings.partitions)
        self.triggers = app.topic(
            settings.topic(ACTION_TRIGGERS), key_serializer="raw", value_serializer="raw"
        )
        self.dead_letters = app.topic(
            settings.topic(ACTIONS_DLQ), key_serializer="raw", value_serializer="raw"
        )
        self.outputs = app.topic(
            settings.topic(JOURNEY_EVENTS),
            settings.topic(EXPERIENCE_MOMENTS),
            key_serializer="raw",
            value_serializer="raw",
        )
        self._session: aiohttp.ClientSession | None = None
        for action in self.actions:  # every series from the start, at 0 (rate() and alerts)
            for result in RESULTS:
                ACTION_DELIVERIES.labels(action.name, result)
            ACTION_LATENCY.labels(action.name)

    def register(self) -> None:
        if not self.settings.actions_enabled or not self.actions:
            log.warning(
                "actions agent idle: "
                + ("JW_ACTIONS_ENABLED is false" if self.actions else "no actions: in the file")
            )
            self.readiness.checks["partitions_assigned"] = True
            return
        self.app.agent(self.outputs, name="actions-route")(self._route)
        self.app.agent(self.triggers, name="actions-deliver")(self._deliver)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _route(self, stream: Any) -> None:
        async for raw in stream:
            output = _output_of(raw)
            if output is None:
                continue
            if act.matching(self.actions, output) or (self.values_needed and act.is_value(output)):
                person = str(output.get("person_id") or "")
                # buffered: Faust flushes the producer before it commits the output's offset
                await self.triggers.send(key=person.encode(), value=raw)

    async def _deliver(self, stream: Any) -> None:
        memory_ms = int(self.settings.action_memory_days * 86_400_000)
        async for event in stream.events():
            output = _output_of(event.value)
            if output is None:
                continue
            person = str(output.get("person_id") or "")
            output_id = str(output.get("output_id") or "")
            at = int(output.get("at") or 0)
            memory_key = f"p|{person}"
            memory = self.table.get(memory_key) or act.empty_memory()
            rules = act.matching(self.actions, output)
            if act.stale(memory, at, memory_ms):
                for action in rules:
                    ACTION_DELIVERIES.labels(action.name, "stale").inc()
                continue
            act.forget_old(memory, at, memory_ms)
            if self.values_needed and act.is_value(output):
                seen = act.idempotency_key(output_id, "$value")
                if act.done_outcome(memory, seen) is None:
                    memory["value"] = act.add_value(memory["value"], output)
                    act.remember(memory, seen, at, "value")
            for action in rules:
                requested = await self._act(action, output, person, output_id, memory)
                self.table[memory_key] = memory
                if requested:
                    # that it was sent is on the broker before anything else: a crash from
                    # here on never sends it again (the others are harmless to decide again,
                    # and Faust flushes the producer before it commits the trigger's offset)
                    await self.app.producer.flush()
            self.table[memory_key] = memory

    async def _act(
        self,
        action: act.Action,
        output: dict[str, Any],
        person: str,
        oid: str,
        memory: dict[str, Any],
    ) -> bool:
        """Act on one trigger and rule; its outcome goes into ``memory``. Whether a request
        was sent (delivered or dead-lettered)."""
        name = action.name
        key = act.idempotency_key(oid, name)
        at = int(output.get("at") or 0)
        if act.done_outcome(memory, key) is not None:
            ACTION_DELIVERIES.labels(name, "duplicate").inc()
            return False
        if not act.value_allows(action, memory["value"]):
            act.remember(memory, key, at, "below_value")
            ACTION_DELIVERIES.labels(name, "below_value").inc()
            return False
        if act.limited(action, memory["last"].get(name), at):
            act.remember(memory, key, at, "limited")
            ACTION_DELIVERIES.labels(name, "limited").inc()
            return False
        try:
            result = await deliver(
                self.session(), action, output, self.urls[name], self.headers[name], self.settings
            )
        except Exception as exc:  # a bug or a body the receiver's client refuses: data, not a crash
            log.exception("action could not be sent", extra={"rule": name, "output_id": oid})
            result = Delivery(False, None, 1, f"error_{type(exc).__name__}", str(exc)[:200])
        if result.ok:
            memory["last"][name] = at
            act.remember(memory, key, at, "delivered")
            ACTION_DELIVERIES.labels(name, "delivered").inc()
            ACTION_LATENCY.labels(name).observe(max(0.0, time.time() - at / 1000))
            return True
        letter = {
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "rule": name,
            "idempotency_key": act.idempotency_key(oid, name),
            "output_id": oid,
            "person_id": person,
            "reason": result.reason,
            "status": result.status,
            "attempts": result.attempts,
            "answer": result.answer,
            "url": act.shown_url(action),
            "trigger": output,
        }
        sent = await self.dead_letters.send(key=person.encode(), value=orjson.dumps(letter))
        await sent
        act.remember(memory, key, at, "dead_lettered")
        ACTION_DELIVERIES.labels(name, "dead_lettered").inc()
        log.error(
            "action undeliverable: sent to actions.dlq",
            extra={
                "rule": name,
                "url": act.shown_url(action),
                "reason": result.reason,
                "attempts": result.attempts,
                "output_id": oid,
            },
        )
        return True


async def send_example(
    action: act.Action, settings: Settings, at: int
) -> tuple[Delivery, dict[str, Any]]:
    """One example delivery of ``action`` (``journeywatch actions test``): its answer and the
    body sent."""
    secrets = {k: v.get_secret_value() for k, v in settings.action_secrets.items()}
    headers = act.resolve_headers(action, secrets)
    url = act.resolve_url(action, secrets)
    output = act.example_output(action, at)
    async with aiohttp.ClientSession() as session:
        result = await deliver(session, action, output, url, headers, settings)
    return result, output
