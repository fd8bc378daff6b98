"""Every Prometheus metric journeywatch exposes, in one module.

Names follow Prometheus conventions (``jw_`` prefix, ``_total`` counters, ``_seconds``
durations). Label values come from closed sets (channels, reject reasons, table names), so
cardinality is bounded. Hot paths use cached children (``LabelCache``): resolving labels costs
about three times an increment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric

from pipeline import __version__
from pipeline.contract import Channel
from pipeline.definitions import JourneyCatalog

_M = TypeVar("_M", Counter, Gauge, Histogram)

EVENTS_ACCEPTED = Counter(
    "jw_events_accepted_total",
    "Touchpoint events that passed validation at ingest.",
    ["channel"],
)
EVENTS_REJECTED = Counter(
    "jw_events_rejected_total",
    "Touchpoint events refused at ingest and sent to the dead-letter topic.",
    ["channel", "reason"],
)
INGEST_BATCH_SECONDS = Histogram(
    "jw_ingest_batch_seconds",
    "Time to validate and forward one ingest batch.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SINK_ROWS = Counter("jw_sink_rows_written_total", "Rows written to ClickHouse.", ["table"])
SINK_ERRORS = Counter(
    "jw_sink_write_errors_total", "ClickHouse writes that failed (each is retried).", ["table"]
)
SINK_WRITE_SECONDS = Histogram(
    "jw_sink_write_seconds",
    "Duration of one ClickHouse insert, retries included.",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_DUPLICATES_SKIPPED = Counter(
    "jw_sink_rows_skipped_total",
    "Re-delivered rows the sink skipped because ClickHouse already held them.",
    ["table"],
)
# Journeys (the journey agent of the streaming topology increments these). Label values are
# journey and stage names from the definitions file and channels: bounded sets.
JOURNEYS_STARTED = Counter("jw_journeys_started_total", "Journeys started.", ["journey", "channel"])
JOURNEY_STAGE_ENTERED = Counter(
    "jw_journey_stage_entered_total",
    "Journeys entering a stage (the denominator of the stage's drop-off rate).",
    ["journey", "stage", "channel"],
)
JOURNEYS_CONVERTED = Counter(
    "jw_journeys_converted_total",
    "Journeys that reached their goal.",
    ["journey", "stage", "channel"],
)
JOURNEYS_DROPPED_OFF = Counter(
    "jw_journeys_dropped_off_total",
    "Journeys that stopped progressing at a stage for longer than it allows.",
    ["journey", "stage", "channel"],
)
# A counter only goes up: a drop-off that later touchpoints convert (the engine's
# dropoff_retracted) is counted here, with the labels of the drop-off it retracts, and net
# drop-offs are dropped_off - dropoffs_retracted (docs/streaming-topology.md, metrics).
JOURNEYS_DROPOFFS_RETRACTED = Counter(
    "jw_journeys_dropoffs_retracted_total",
    "Drop-offs retracted because the journey then converted (labels: the drop-off's).",
    ["journey", "stage", "channel"],
)
# Per segment (pipeline/segment_rules.py): the journeys file names at most 20 segments, and a
# journey in none is "other", so the label is bounded; no channel label (journey x stage x
# segment), which keeps these series at most 21 times the stages.
SEGMENT_STAGE_ENTERED = Counter(
    "jw_segment_stage_entered_total",
    "Journeys entering a stage, by the journey's segment (the denominator of its drop-off rate).",
    ["journey", "stage", "segment"],
)
SEGMENT_CONVERTED = Counter(
    "jw_segment_journeys_converted_total",
    "Journeys that reached their goal, by the journey's segment.",
    ["journey", "stage", "segment"],
)
SEGMENT_DROPPED_OFF = Counter(
    "jw_segment_journeys_dropped_off_total",
    "Journeys that dropped off at a stage, by the journey's segment.",
    ["journey", "stage", "segment"],
)
SEGMENT_DROPOFFS_RETRACTED = Counter(
    "jw_segment_dropoffs_retracted_total",
    "Drop-offs retracted because the journey then converted, by the journey's segment.",
    ["journey", "stage", "segment"],
)
JOURNEYS_RETIRED = Counter(
    "jw_journeys_retired_total",
    "In-flight journeys ended because the journeys file no longer has their journey or stage "
    "(reason: journey_removed, stage_removed; docs/journey-engine.md, editing journeys).",
    ["journey", "stage", "reason"],
)
NEGATIVE_MOMENTS = Counter(
    "jw_negative_moments_total", "Negative moments by kind.", ["kind", "channel", "journey"]
)
MOMENTS_OF_TRUTH = Counter(
    "jw_moments_of_truth_total",
    "Moments of truth passed or failed.",
    ["journey", "moment", "channel", "outcome"],
)
# Experience KPIs (the journey agent counts them from the engine's ``kpi`` and ``score``
# outputs: ExperienceKpis below). Labels: journey (a name from the journeys file, or "" for an
# answer outside any journey), channel (the touchpoint's), and one closed set each.
CSAT_ANSWERS = Counter(
    "jw_csat_answers_total",
    "CSAT survey answers by score (1-5; CSAT is the share of 4 and 5).",
    ["journey", "channel", "score"],
)
NPS_ANSWERS = Counter(
    "jw_nps_answers_total",
    "NPS survey answers by category: promoter (9-10), passive (7-8), detractor (0-6).",
    ["journey", "channel", "category"],
)
CASES_RESOLVED = Counter(
    "jw_cases_resolved_total",
    "Journeys with first-contact resolution (the journeys file's first_contact_resolution) "
    "that reached their goal, by whether one contact did it (first_contact: yes, no).",
    ["journey", "channel", "first_contact"],
)
COMPLAINT_RESPONSE = Histogram(
    "jw_complaint_response_seconds",
    "From a complaint to the business's first response (event time), by the responding "
    "touchpoint's channel.",
    ["journey", "channel"],
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800),
)
PEAK_END_SCORE = Histogram(
    "jw_peak_end_score",
    "Peak-end experience score (0 awful, 50 neutral, 100 delightful) of journeys as they end, "
    "by outcome (converted, dropped_off).",
    ["journey", "outcome"],
    buckets=(10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
)
REVENUE = Counter(
    "jw_revenue_total",
    "Revenue of identified customers' purchases (the engine's ltv_increment KPI), in its "
    "currency (the first 20 currencies a worker sees, later ones as other).",
    ["journey", "channel", "currency"],
)
ACTIVE_JOURNEYS = Gauge(
    "jw_active_journeys",
    "Journeys in progress (not converted, not dropped off) by journey and current stage.",
    ["journey", "stage"],
)
OUTPUT_LATENCY = Histogram(
    "jw_output_latency_seconds",
    "From a touchpoint's event time to the journey output it caused leaving the worker.",
    ["type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30, 60, 300),
)
DROPOFF_DELAY = Histogram(
    "jw_dropoff_delay_seconds",
    "From a journey stage's deadline passing (event time) to its drop-off being emitted.",
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
)
SWEEP_SECONDS = Histogram(
    "jw_sweep_seconds",
    "Duration of one sweep of the journey partitions (deadlines, idle watermarks).",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
HANDOFF_MESSAGES = Counter(
    "jw_identity_handoff_messages_total",
    "Identity hand-off messages sent between journey partitions, by kind.",
    ["kind"],
)
JOURNEY_ERRORS = Counter(
    "jw_journey_errors_total",
    "Records the journey agent could not apply, sent to journeys.dlq and skipped, by kind: "
    "touchpoint, handoff (an identity hand-off message), state (a saved state record).",
    ["kind"],
)
# Closed-loop actions (streams/actions.py); rule: an actions: name of the journeys file
ACTION_DELIVERIES = Counter(
    "jw_action_deliveries_total",
    "Actions by rule and result: delivered (2xx), dead_lettered (4xx or tries exhausted: "
    "actions.dlq), limited (the customer had one within at_most_once_per), duplicate (done "
    "before a restart), below_value (the customer's value under min_value), stale (older than "
    "JW_ACTION_MEMORY_DAYS behind the customer's newest trigger).",
    ["rule", "result"],
)
ACTION_ATTEMPTS = Counter(
    "jw_action_attempts_total",
    "Webhook requests of actions by rule and outcome: ok, retried (5xx, 408, 429, time-out, "
    "no connection: tried again), refused (another 4xx), failed (the last try of an action).",
    ["rule", "outcome"],
)
ACTION_LATENCY = Histogram(
    "jw_action_delivery_latency_seconds",
    "From the trigger's event time to its action's delivery (the receiver's 2xx).",
    ["rule"],
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600),
)
DROPOFF_HOLD = Gauge(
    "jw_dropoff_hold_seconds",
    "How long a journey's drop-offs wait after the watermark passes their deadline, for "
    "touchpoints of a late channel (JW_CHANNEL_LATENESS_S); 0: reported at once",
    ["journey"],
)
LATE_EVENTS = Counter(
    "jw_late_events_total",
    "Touchpoints that arrived after the watermark had passed them (applied on arrival).",
)
TOUCHES_TAKEN = Counter(
    "jw_touches_taken_total",
    "Touchpoints held in a partition's engine that left with a person handed to another "
    "partition: the ones watermark alignment does not cover (each may arrive late there).",
)
JOURNEY_INPUT_OFFSET = Gauge(
    "jw_journey_input_offset",
    "Offset after the last record the journey agent has processed, per input partition "
    "(processed, not necessarily committed: touchpoints held for the watermark commit later).",
    ["topic", "partition"],
)
JOURNEY_INPUTS_DONE = Counter(
    "jw_journey_inputs_done_total",
    "Input records of the journey agent whose effects are safe (outputs acknowledged by the "
    "broker, state saved) and that are acknowledged for commit, per topic (touchpoints, "
    "identity hand-off messages).",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "jw_consumer_lag", "Records not yet processed, per topic and partition.", ["topic", "partition"]
)
WATERMARK_ALIGNMENT_LAG = Gauge(
    "jw_watermark_alignment_lag_seconds",
    "Event time by which watermark alignment holds a partition's watermark behind what its own "
    "input allows (a peer partition behind, or a touch in flight).",
    ["partition"],
)
COLLECTOR_REQUESTS = Counter(
    "jw_collector_requests_total",
    "HTTP requests to POST /v1/events, the Segment API, the Snowplow tracker protocol and the "
    "survey webhooks by status code.",
    ["status"],
)
COLLECTOR_EVENTS = Counter(
    "jw_collector_events_total",
    "Events submitted to the collector, accepted or rejected.",
    ["outcome"],
)
COLLECTOR_UNMAPPED = Counter(
    "jw_collector_unmapped_events_total",
    "Events stored under their default touchpoint name because no rule of their source's "
    "mapping (the journeys file's sources:) matched them, per source and event name (the first "
    "100 names of a source, later ones as other).",
    ["source", "event"],
)
COLLECTOR_REQUEST_SECONDS = Histogram(
    "jw_collector_request_seconds",
    "Time to answer POST /v1/events, broker acknowledgement included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WORKER_INFO = Info("jw_worker", "journeywatch process: version and role.")


class RunRestarts:
    """``jw_run_restarts_total{process}``: how many times `journeywatch run` restarted each of
    its processes after it died. The supervisor serves no HTTP: the sink it started sets
    ``read`` to read the run-status file, on each scrape (elsewhere there are no samples)."""

    def __init__(self) -> None:
        self.read: Callable[[], dict[str, int]] = dict

    def describe(self) -> Iterable[Metric]:
        yield self._family()

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for process, restarts in sorted(self.read().items()):
            family.add_metric([process], restarts)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "jw_run_restarts",
            "Processes of `journeywatch run` that died and were started again, per process.",
            labels=["process"],
        )


RUN_RESTARTS = RunRestarts()
REGISTRY.register(RUN_RESTARTS)


class LabelCache(Generic[_M]):
    """Children of a labelled metric, resolved once per label tuple."""

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}
        self.get: Callable[..., _M] = self._get

    def _get(self, *labels: str) -> _M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class KpiOutput(Protocol):
    """What ExperienceKpis reads of an output of the journey engine (pipeline.engine.Output)."""

    @property
    def type(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def journey(self) -> str | None: ...
    @property
    def channel(self) -> str | None: ...
    @property
    def value(self) -> float | None: ...
    @property
    def detail(self) -> tuple[tuple[str, Any], ...]: ...


KPI_OUTPUT_TYPES = frozenset({"kpi", "score"})
NPS_CATEGORIES = ("promoter", "passive", "detractor")
CSAT_SCORES = ("1", "2", "3", "4", "5")
SCORE_OUTCOMES = ("converted", "dropped_off")
MAX_CURRENCIES = 20


class ExperienceKpis:
    """The experience KPI metrics, counted from the engine's ``kpi`` and ``score`` outputs.

    Every journey x channel series of the CSAT, NPS and first-contact-resolution counters
    exists from the start at 0 (every score, category and answer): a rule dividing detractors
    by answers must not find the detractors' series missing when the first one comes. An
    answer outside any journey (journey "") creates its channel's series on first sight.
    """

    def __init__(self, catalog: JourneyCatalog) -> None:
        self.csat = LabelCache(CSAT_ANSWERS)
        self.nps = LabelCache(NPS_ANSWERS)
        self.resolved = LabelCache(CASES_RESOLVED)
        self.response = LabelCache(COMPLAINT_RESPONSE)
        self.score = LabelCache(PEAK_END_SCORE)
        self.revenue = LabelCache(REVENUE)
        self._answered: set[tuple[str, str]] = set()
        self._currencies: set[str] = set()
        for definition in catalog.journeys:
            for outcome in SCORE_OUTCOMES:
                self.score.get(definition.name, outcome)
            for channel in Channel:
                self._answers(definition.name, channel.value)
                if definition.first_contact_resolution:
                    for first in ("yes", "no"):
                        self.resolved.get(definition.name, channel.value, first)

    def _answers(self, journey: str, channel: str) -> None:
        """Every CSAT score's and NPS category's series of ``journey`` x ``channel``, at 0."""
        if (journey, channel) in self._answered:
            return
        self._answered.add((journey, channel))
        for score in CSAT_SCORES:
            self.csat.get(journey, channel, score)
        for category in NPS_CATEGORIES:
            self.nps.get(journey, channel, category)

    def observe(self, output: KpiOutput) -> None:
        """Count ``output`` when it is a KPI or a score the metrics hold; ignore the rest."""
        value = output.value
        if value is None:
            return
        journey, channel, name = output.journey or "", output.channel or "", output.name
        if output.type == "score":
            outcome = str(dict(output.detail).get("outcome", ""))
            if outcome in SCORE_OUTCOMES:
                self.score.get(journey, outcome).observe(value)
            return
        if output.type != "kpi":
            return
        if name == "csat":
            self._answers(journey, channel)
            self.csat.get(journey, channel, str(round(value))).inc()
        elif name == "nps":
            self._answers(journey, channel)
            category = "promoter" if value >= 9 else "passive" if value >= 7 else "detractor"
            self.nps.get(journey, channel, category).inc()
        elif name == "first_contact_resolution":
            self.resolved.get(journey, channel, "yes" if value >= 1 else "no").inc()
        elif name == "complaint_response":
            self.response.get(journey, channel).observe(max(0.0, value))
        elif name == "ltv_increment":
            self.revenue.get(journey, channel, self._currency(output)).inc(max(0.0, value))

    def _currency(self, output: KpiOutput) -> str:
        currency = str(dict(output.detail).get("currency") or "")
        if currency in self._currencies:
            return currency
        if len(self._currencies) < MAX_CURRENCIES and currency:
            self._currencies.add(currency)
            return currency
        return "other"


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(amount)`` for each amount, with one increment per bucket touched
    and one of the sum (each increment takes a lock; the journey agent observes the latency of
    two outputs per touchpoint). Relies on prometheus_client's histogram internals, pinned in
    constraints.txt and checked against ``observe`` by tests/unit/test_metrics.py."""
    bounds: list[float] = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1  # the first bucket with amount <= bound
        total += amount
    buckets = histogram._buckets
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    histogram._sum.inc(total)


def set_worker_info(role: str) -> None:
    WORKER_INFO.info({"version": __version__, "role": role})


def exposition(
    registry: CollectorRegistry = REGISTRY, names: Sequence[str] = ()
) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type; with ``names`` (the
    ``name[]`` parameters of ``GET /metrics``, as prometheus_client's own handler takes them),
    only those samples: a poller that wants one counter does not pay for the whole page."""
    if names:
        return generate_latest(registry.restricted_registry(names)), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
