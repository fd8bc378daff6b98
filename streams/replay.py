"""``journeywatch replay``: re-process the dead-letter topic after a fix (``dlq``), or send
again the raw records of a time range that never reached ClickHouse (``raw``).

``replay raw`` is for events skipped upstream of the journey agents (a consumer group's offset
moved past them by hand, a bug in an earlier ingest): it looks each event id up in ClickHouse
and sends again only those it does not hold, after checking that nothing is still in flight,
so nothing is counted twice.

``replay dlq``:

Each record of ``touchpoints.dlq`` not yet replayed (the consumer group ``journeywatch-replay``
remembers where the last run stopped) is validated again by the current event contract. One
that passes now goes back to ``touchpoints.raw``, keyed as the collector keys it, and flows
through the pipeline like any event; one that still fails stays in the dead-letter topic (and
in ClickHouse's ``failed_events``) and is reported by reason. The group's offsets move only
after the broker has acknowledged every re-produced event, so an interrupted run re-does at
most its last records, and those carry the same ``event_id``: ClickHouse keeps one row per
event id and the journey engine ignores an event id it has just seen.

``--from-beginning`` reconsiders every record still in the topic (for a second fix): events
replayed before are then sent again with the same ``event_id`` (deduplicated as above; the
journey engine remembers the last event ids of each person, so replay a second time soon
rather than weeks later).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.deadletter import REASON
from pipeline.settings import Settings
from streams.offsets import confirmed_end_offsets, group_lag
from streams.topics import BY_PERSON, DLQ, RAW, kafka_connection

GROUP = "journeywatch-replay"


@dataclass
class ReplayReport:
    considered: int = 0
    replayed: Counter[str] = field(default_factory=Counter)  # by channel
    still_failing: Counter[str] = field(default_factory=Counter)  # by reason now
    earlier_reasons: Counter[str] = field(default_factory=Counter)  # of the replayed ones

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would replay" if dry_run else "replayed"
        out = [f"{self.considered:,} dead letters considered"]
        out.append(
            f"{verb} {sum(self.replayed.values()):,} events that pass now"
            + (f" ({_counts(self.replayed)})" if self.replayed else "")
        )
        if self.earlier_reasons:
            out.append(f"  they had failed with: {_counts(self.earlier_reasons)}")
        out.append(
            f"{sum(self.still_failing.values()):,} still fail and stay in {DLQ}"
            + (f" ({_counts(self.still_failing)})" if self.still_failing else "")
        )
        return out


def _records(
    consumer: KafkaConsumer, spans: dict[TopicPartition, tuple[int, int]]
) -> Iterator[tuple[TopicPartition, ConsumerRecord]]:
    """Every record of ``spans`` (partition: first offset, end offset), as they arrive."""
    consumer.assign(list(spans))
    for tp, (start, _) in spans.items():
        consumer.seek(tp, start)
    position = {tp: start for tp, (start, _) in spans.items()}
    while any(position[tp] < end for tp, (_, end) in spans.items()):
        for tp, records in consumer.poll(timeout_ms=1000).items():
            for record in records:
                if record.offset >= spans[tp][1]:
                    break
                position[tp] = record.offset + 1
                yield tp, record


def _replayed_from(tp: TopicPartition, offset: int) -> tuple[str, bytes]:
    """The header a re-sent record carries: where it was read."""
    return ("jw.replayed_from", f"{tp.topic}:{tp.partition}:{offset}".encode())


def _counts(counter: Counter[str]) -> str:
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {n:,}" for name, n in ranked)


def pending(settings: Settings, from_beginning: bool) -> dict[TopicPartition, tuple[int, int]]:
    """Per DLQ partition: (first offset to consider, end offset)."""
    topic = settings.topic(DLQ)
    consumer = KafkaConsumer(**kafka_connection(settings), group_id=GROUP, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        starts = consumer.beginning_offsets(partitions)
        committed = {tp: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close()
    ends = confirmed_end_offsets(settings, partitions)
    return {
        tp: (
            starts[tp] if from_beginning or committed[tp] is None else int(committed[tp] or 0),
            ends[tp],
        )
        for tp in partitions
    }


def replay_dead_letters(
    settings: Settings,
    *,
    dry_run: bool = False,
    from_beginning: bool = False,
    on_record: Callable[[], None] = lambda: None,
) -> ReplayReport:
    """Replay what passes now; see the module docstring."""
    todo = {tp: span for tp, span in pending(settings, from_beginning).items() if span[0] < span[1]}
    report = ReplayReport()
    if not todo:
        return report
    consumer = KafkaConsumer(
        **kafka_connection(settings),
        group_id=GROUP,
        enable_auto_commit=False,
        max_poll_records=2000,
    )
    producer = (
        None if dry_run else KafkaProducer(**kafka_connection(settings), acks="all", linger_ms=5)
    )
    raw_topic = settings.topic(RAW)
    try:
        done: dict[TopicPartition, int] = {}
        for tp, record in _records(consumer, todo):
            report.considered += 1
            headers = {k: v.decode(errors="replace") for k, v in record.headers or []}
            result = decode_touchpoint(
                record.value or b"", datetime.now(UTC), settings.touchpoint_max_age
            )
            if isinstance(result, TouchpointEvent):
                report.replayed[result.channel.value] += 1
                report.earlier_reasons[headers.get(REASON, "unknown")] += 1
                if producer is not None:
                    producer.send(
                        raw_topic,
                        value=record.value,
                        key=result.person_key().encode(),
                        headers=[_replayed_from(tp, record.offset)],
                    )
            else:
                report.still_failing[result.reason.value] += 1
            done[tp] = record.offset + 1
            on_record()
        if producer is not None:
            producer.flush()  # every replayed event acknowledged: only now move the offsets
            consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in done.items()})
    finally:
        if producer is not None:
            producer.close()
        consumer.close()
    return report


@dataclass
class RawReplayReport:
    considered: int = 0  # records of the raw topic in the time range
    stored: int = 0  # already in ClickHouse: left alone
    replayed: int = 0  # not in ClickHouse: sent again
    unreadable: int = 0  # no event id to look up: the ingest dead-letters those

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would send again" if dry_run else "sent again"
        return [
            f"{self.considered:,} records of {RAW} in the range",
            f"{self.stored:,} already stored in ClickHouse: left alone",
            f"{verb} {self.replayed:,} that never reached ClickHouse",
            *(
                [f"{self.unreadable:,} without a readable event_id (see `replay dlq`)"]
                if self.unreadable
                else []
            ),
        ]


class PipelineBehind(RuntimeError):
    """The pipeline has not caught up: a replay now could send what is merely in flight."""


def check_caught_up(settings: Settings) -> None:
    """Refuse while the ingest or the sink has records not yet processed: an event still in
    flight would look missing from ClickHouse and be sent twice."""
    behind = {
        "ingest": group_lag(settings, settings.topic("journeywatch"), [settings.topic(RAW)]),
        "sink": group_lag(
            settings, settings.topic("journeywatch-sink"), [settings.topic(BY_PERSON)]
        ),
    }
    if any(behind.values()):
        lag = ", ".join(f"{name} {n:,} records behind" for name, n in behind.items() if n)
        raise PipelineBehind(f"the pipeline has not caught up ({lag}); replay once it has")


def raw_span(settings: Settings) -> dict[TopicPartition, tuple[int, int]]:
    """Per raw partition: (first offset still in the topic, end offset)."""
    topic = settings.topic(RAW)
    consumer = KafkaConsumer(**kafka_connection(settings), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        starts = consumer.beginning_offsets(partitions)
    finally:
        consumer.close()
    ends = confirmed_end_offsets(settings, partitions)
    return {tp: (starts[tp], ends[tp]) for tp in partitions}


def replay_raw(
    settings: Settings,
    since: datetime,
    until: datetime,
    stored: Callable[[list[str]], set[str]],
    *,
    dry_run: bool = False,
    on_record: Callable[[], None] = lambda: None,
    chunk: int = 2000,
) -> RawReplayReport:
    """Send again the raw records of ``[since, until)`` (Kafka record time) whose event ids
    ClickHouse does not hold; ``stored`` answers which of some event ids it holds."""
    spans = {tp: span for tp, span in raw_span(settings).items() if span[0] < span[1]}
    report = RawReplayReport()
    if not spans:
        return report
    low, high = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
    consumer = KafkaConsumer(**kafka_connection(settings), enable_auto_commit=False)
    producer = (
        None if dry_run else KafkaProducer(**kafka_connection(settings), acks="all", linger_ms=5)
    )
    batch: list[tuple[str, bytes | None, bytes, TopicPartition, int]] = []

    def flush() -> None:
        known = stored([event_id for event_id, *_ in batch])
        for event_id, key, value, tp, offset in batch:
            if event_id in known:
                report.stored += 1
                continue
            report.replayed += 1
            if producer is not None:
                producer.send(
                    settings.topic(RAW),
                    value=value,
                    key=key,
                    headers=[_replayed_from(tp, offset)],
                )
        batch.clear()

    try:
        for tp, record in _records(consumer, spans):
            on_record()
            if not low <= record.timestamp < high:
                continue
            report.considered += 1
            try:
                event_id = orjson.loads(record.value or b"null")["event_id"]
            except (orjson.JSONDecodeError, TypeError, KeyError):
                report.unreadable += 1
                continue
            if not isinstance(event_id, str):
                report.unreadable += 1
                continue
            batch.append((event_id, record.key, record.value or b"", tp, record.offset))
            if len(batch) >= chunk:
                flush()
        if batch:
            flush()
        if producer is not None:
            producer.flush()
    finally:
        if producer is not None:
            producer.close()
        consumer.close()
    return report
