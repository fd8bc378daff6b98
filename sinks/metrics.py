"""Every Prometheus metric journeywatch exposes, in one module.

Names follow Prometheus conventions (``jw_`` prefix, ``_total`` counters, ``_seconds``
durations). Label values come from closed sets (channels, reject reasons, table names), so
cardinality is bounded. Hot paths use cached children (``LabelCache``): resolving labels costs
about three times an increment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

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


def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
