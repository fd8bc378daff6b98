"""Quix Streams, for comparison: a keyed stateful count in RocksDB, two outputs per input.

Run in the Quix Streams virtual environment (``.venv-quix``, made by the topology suite),
from the repository: ``python -m benchmarks.quix_count BOOTSTRAP TOPIC COUNT OUTPUT STATE_DIR
GROUP``. It consumes ``TOPIC`` from the start in consumer group ``GROUP``, counts each key's
records in RocksDB state (with its changelog topic), produces two ~250-byte JSON records per
input to ``OUTPUT``, stops after ``COUNT`` inputs and prints one JSON line: ``rate``, the
inputs/s over the steady middle (10% to 90% of the inputs done); ``rate_to_end``, the inputs/s
from 10% done to the return of ``Application.run`` (the last checkpoint included: every output
acknowledged, every offset committed; the consumer closed); ``version``, Quix Streams'.

An input is *done* when Quix has processed it (``on_message_processed``: decoded, counted,
both outputs handed to librdkafka's producer); a checkpoint (producer and changelog flushed,
offsets committed) every second (``commit_interval``, as the journeywatch worker commits).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks._steady import (
    FETCH_MAX_WAIT_MS,
    HEARTBEAT_MS,
    PAD,
    SESSION_TIMEOUT_MS,
    SteadyMiddle,
)


def count_with_state(value: dict[str, Any], state: Any) -> list[dict[str, Any]]:
    """Count the key's records; two outputs."""
    count = int(state.get("count", 0)) + 1
    state.set("count", count)
    first = {
        "event_id": value["event_id"],
        "occurred_at": value["occurred_at"],
        "touchpoint": value["touchpoint"],
        "output": count,
        "pad": PAD,
    }
    return [first, {**first, "output": -count}]


def _topic_manager(bootstrap: str, group: str) -> Any:
    """Quix's topic manager, except that it takes Kafka's default retention for a topic whose
    configuration the broker does not report: Tansu's DescribeConfigs returns none, and Quix
    derives its changelog topics' retention from their source topic's."""
    from quixstreams.models.topics import TopicAdmin, TopicManager  # only in .venv-quix

    class TansuTopicManager(TopicManager):  # type: ignore[misc]
        @classmethod
        def derive_topic_config(cls, topics: Any) -> Any:
            topics = list(topics)
            for topic in topics:
                topic.broker_config.extra_config.setdefault("retention.ms", "604800000")
            return super().derive_topic_config(topics)

    return TansuTopicManager(topic_admin=TopicAdmin(broker_address=bootstrap), consumer_group=group)


def main() -> None:
    import quixstreams  # only in .venv-quix
    from quixstreams import Application

    bootstrap, topic_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    output_name, state_dir, group = sys.argv[4], sys.argv[5], sys.argv[6]
    steady = SteadyMiddle(count)
    processed = [0]
    app: Any = None

    def on_processed(topic: str, partition: int, offset: int) -> None:
        processed[0] += 1
        steady.done(processed[0])
        if processed[0] == count:
            app.stop()

    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=state_dir,
        loglevel="WARNING",
        on_message_processed=on_processed,
        consumer_extra_config={  # the embedded profile's (benchmarks/_steady.py)
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
        },
        producer_extra_config={"linger.ms": 5},
        topic_manager=_topic_manager(bootstrap, group),
    )
    source = app.topic(topic_name, key_deserializer="str", value_deserializer="json")
    output = app.topic(output_name, key_serializer="str", value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(count_with_state, stateful=True, expand=True)
    sdf.to_topic(output)
    app.run()
    result = {
        "rate": steady.rate(),
        "rate_to_end": steady.rate_until_now(processed[0]),
        "version": quixstreams.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
