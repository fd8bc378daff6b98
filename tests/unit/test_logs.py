"""Logs do not flood: a repeated warning or error is written once per window, with a count."""

from __future__ import annotations

import io
import json
import logging

from streams.logs import JsonFormatter, RepeatFilter


def _logger(clock: list[float]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(window_s=30.0, clock=lambda: clock[0]))
    logger = logging.getLogger(f"test.repeats.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_repeated_error_is_written_once_per_window_with_the_count_held_back() -> None:
    clock = [0.0]
    logger, stream = _logger(clock)
    for attempt in range(400):  # a broker outage: the same error, 4 a second, for 100 s
        clock[0] = attempt / 4
        logger.error("Unable connect to node with id %s: %s", 1, f"attempt {attempt}")
    lines = _lines(stream)
    assert [line["msg"] for line in lines] == [
        f"Unable connect to node with id 1: attempt {n}" for n in (0, 120, 240, 360)
    ]
    assert [line.get("repeated") for line in lines] == [None, 119, 119, 119]


def test_different_messages_levels_and_info_are_not_held_back() -> None:
    clock = [0.0]
    logger, stream = _logger(clock)
    for _ in range(3):
        logger.warning("partition %s lagging", 1)
        logger.error("partition %s lagging", 1)  # another level: its own kind
        logger.warning("another problem")
        logger.info("partition %s loaded", 2)  # info and debug pass as they are
    lines = _lines(stream)
    assert [(line["level"], line["msg"]) for line in lines] == [
        ("warning", "partition 1 lagging"),
        ("error", "partition 1 lagging"),
        ("warning", "another problem"),
        ("info", "partition 2 loaded"),
        ("info", "partition 2 loaded"),
        ("info", "partition 2 loaded"),
    ]
