"""Structured logs: one JSON object per line, quiet (WARNING) by default, and no floods: a
warning or error repeated within ``REPEAT_WINDOW_S`` is written once, and the next one after
the window says how many were left out (``repeated``). With the broker down, aiokafka logs the
same connection error several times a second for as long as the outage lasts."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

REPEAT_WINDOW_S = 30.0

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=`` (or set by a filter), as written."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RESERVED and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per window for each logger and message template
    (``record.msg``, before its arguments are filled in); counts what it holds back and adds
    the count to the next record of that kind it lets through. Info and debug pass as they are.
    """

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # → (written at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        written = self._seen.get(kind)
        if written is not None and now - written[0] < self._window_s:
            self._seen[kind] = (written[0], written[1] + 1)
            return False
        if written is not None and written[1]:
            record.repeated = written[1]  # held back since the last one written
        if len(self._seen) > 10_000:  # templates are few; arguments are not part of the key
            self._seen.clear()
        self._seen[kind] = (now, 0)
        return True


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for journeywatch and the libraries under it."""
    noisy = "ERROR" if level in ("WARNING", "ERROR", "CRITICAL") else level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"repeats": {"()": RepeatFilter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["repeats"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # The Kafka clients log routine reconnects and rebalances as warnings.
            "kafka": {"level": noisy},
            "aiokafka": {"level": noisy},
            "faust": {"level": level},
            "mode": {"level": level},
        },
    }


def setup_logging(level: str) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level))
