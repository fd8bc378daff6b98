"""End offsets on the embedded broker (streams/offsets.py), which can answer ListOffsets with
the start of a partition's last record batch + 1 (../shared/PLATFORM.md)."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.offsets import confirmed_end_offsets
from streams.topics import ensure_topics
from tests.helpers import (
    read_topic,
)

pytestmark = pytest.mark.integration


def test_confirmed_end_offsets_are_past_the_last_record_however_late_the_fetch_answers(
    broker: EmbeddedBroker,
) -> None:
    """Records sent in batches of several (one ``flush`` each) to 3 of 4 partitions: the
    confirmed end of each is the offset after its last record, with a poll that gives up
    before the broker answers (0 or 1 ms, as on a loaded machine) as with one that waits. Before,
    an end was taken as confirmed by the first poll that found nothing: with such a poll it
    was the start of the last batch + 1, and on a loaded CI machine a worker's table recovery
    and a test's read of journeys.dlq stopped there."""
    ensure_topics(Settings(broker_url=broker.url, partitions=4, topic_prefix=""), ("ends",))
    producer = KafkaProducer(bootstrap_servers=broker.url, linger_ms=200)
    sent = {0: 0, 1: 0, 2: 0, 3: 0}
    for batch, sizes in enumerate([(5, 1, 3, 0), (2, 0, 7, 0), (1, 4, 1, 0)]):
        for partition, size in enumerate(sizes):
            for n in range(size):
                producer.send("ends", f"{batch}-{partition}-{n}".encode(), partition=partition)
                sent[partition] += 1
        producer.flush()
    producer.close()
    partitions = [TopicPartition("ends", p) for p in range(4)]
    truth = {TopicPartition("ends", p): n for p, n in sent.items()}
    consumer = KafkaConsumer(bootstrap_servers=broker.url)
    try:
        reported = consumer.end_offsets(partitions)
    finally:
        consumer.close()
    # what the adapter is for: the broker reports less than there is (its last batch's start)
    assert any(reported[tp] < truth[tp] for tp in partitions), (reported, truth)
    for quiet_ms in (0, 1, 300):
        assert confirmed_end_offsets(broker.url, partitions, quiet_ms=quiet_ms) == truth
    assert len(read_topic(broker.url, "ends")) == sum(sent.values())


def test_a_topic_that_never_goes_quiet_gets_its_ends_by_the_time_out(
    broker: EmbeddedBroker,
) -> None:
    """A producer sends a record every 20 ms while the ends are confirmed: no poll ever finds
    nothing, and the confirmation returns by its time-out with ends at least those reported
    when it began (before, it polled for as long as the records came)."""
    ensure_topics(Settings(broker_url=broker.url, partitions=1, topic_prefix=""), ("busy",))
    producer = KafkaProducer(bootstrap_servers=broker.url)
    for n in range(50):
        producer.send("busy", b"%d" % n)
    producer.flush()
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            producer.send("busy", b"more").get(timeout=10)
            stop.wait(0.02)

    sender = threading.Thread(target=send)
    sender.start()
    tp = TopicPartition("busy", 0)
    try:
        started = time.monotonic()
        ends = confirmed_end_offsets(broker.url, [tp], quiet_ms=300, timeout_s=3)
        took = time.monotonic() - started
    finally:
        stop.set()
        sender.join()
        producer.close()
    assert ends[tp] >= 50
    assert took < 30, f"{took:.1f} s: the confirmation did not stop at its time-out"
