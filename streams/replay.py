"""``journeywatch replay dlq``: re-process the dead-letter topic after a fix.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.deadletter import REASON
from pipeline.settings import Settings
from streams.offsets import confirmed_end_offsets
from streams.topics import DLQ, RAW, bootstrap_servers

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


def _counts(counter: Counter[str]) -> str:
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {n:,}" for name, n in ranked)


def pending(settings: Settings, from_beginning: bool) -> dict[TopicPartition, tuple[int, int]]:
    """Per DLQ partition: (first offset to consider, end offset)."""
    servers = bootstrap_servers(settings)
    topic = settings.topic(DLQ)
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=GROUP, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        starts = consumer.beginning_offsets(partitions)
        committed = {tp: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close()
    ends = confirmed_end_offsets(servers, partitions)
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
    servers = bootstrap_servers(settings)
    todo = {tp: span for tp, span in pending(settings, from_beginning).items() if span[0] < span[1]}
    report = ReplayReport()
    if not todo:
        return report
    consumer = KafkaConsumer(
        bootstrap_servers=servers, group_id=GROUP, enable_auto_commit=False, max_poll_records=2000
    )
    producer = (
        None if dry_run else KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
    )
    raw_topic = settings.topic(RAW)
    try:
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        done: dict[TopicPartition, int] = {}
        while any(done.get(tp, start) < end for tp, (start, end) in todo.items()):
            for tp, records in consumer.poll(timeout_ms=1000).items():
                end = todo[tp][1]
                for record in records:
                    if record.offset >= end:
                        break
                    report.considered += 1
                    headers = {k: v.decode(errors="replace") for k, v in record.headers or []}
                    result = decode_touchpoint(record.value or b"", datetime.now(UTC))
                    if isinstance(result, TouchpointEvent):
                        report.replayed[result.channel.value] += 1
                        report.earlier_reasons[headers.get(REASON, "unknown")] += 1
                        if producer is not None:
                            producer.send(
                                raw_topic,
                                value=record.value,
                                key=result.person_key().encode(),
                                headers=[
                                    (
                                        "jw.replayed_from",
                                        f"{tp.topic}:{tp.partition}:{record.offset}".encode(),
                                    )
                                ],
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
