"""A naive Faust agent, for comparison: one message per iteration, decode, count.

Run as ``python -m benchmarks.naive_agent BROKER TOPIC PORT [APP_ID]`` (the application id
names its consumer group: a fresh one reads the topic from the start); the benchmark reads its
``/count`` page until every record has been seen.
"""

from __future__ import annotations

import sys
from typing import Any

import faust
import orjson

from benchmarks._steady import HEARTBEAT_MS, REBALANCE_TIMEOUT_MS, SESSION_TIMEOUT_MS
from streams.faust_internals import QuietWorker


def main() -> None:
    broker, topic_name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app_id = sys.argv[4] if len(sys.argv) > 4 else "naive-benchmark"
    app = faust.App(
        app_id,
        broker=f"kafka://{broker}",
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_MS / 1000,
        broker_heartbeat_interval=HEARTBEAT_MS / 1000,
        broker_rebalance_timeout=REBALANCE_TIMEOUT_MS / 1000,
        web_port=port,
        web_bind="127.0.0.1",
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = [0]

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for value in stream:
            orjson.loads(value)
            seen[0] += 1

    @app.page("/count")
    async def page(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return view.json({"seen": seen[0]})

    worker = QuietWorker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
