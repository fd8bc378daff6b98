"""Start one journeywatch process role (worker or sink) as a Faust worker."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from typing import Any, NoReturn

from faust.worker import Worker

from pipeline.settings import Settings
from streams.app import create_app
from streams.ingest import register_ingest
from streams.logs import logging_config
from streams.process import GC_THRESHOLDS
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


class QuietWorker(Worker):
    """A Faust worker without the terminal spinner, that stops within a bounded time.

    The spinner writes cursor escape codes into the logs and, worse, installs a log handler
    that sets the root logger to DEBUG, so every debug record of every library is built
    and formatted even when the configured level is WARNING.

    Stopping (after SIGTERM or SIGINT) waits for the broker: with the broker gone, Faust's
    consumer thread and producer retry for ever. ``shutdown_timeout_s`` after the signal the
    process exits anyway, with status 1; nothing is lost, because what was not committed is
    read again by the partition's next owner.
    """

    def __init__(self, *args: Any, shutdown_timeout_s: float = 25.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None
        self._shutdown_timeout_s = shutdown_timeout_s
        self._watchdog: threading.Timer | None = None

    def _schedule_shutdown(self, received: signal.Signals) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self._shutdown_timeout_s, self._exit_now, (received,))
            self._watchdog.daemon = True
            self._watchdog.start()
        super()._schedule_shutdown(received)

    def _exit_now(self, received: signal.Signals) -> None:
        log.error(
            "the worker did not stop within JW_SHUTDOWN_TIMEOUT_S after the signal; exiting "
            "now (what it had not committed is read again by the next owner)",
            extra={"signal": received.name, "shutdown_timeout_s": self._shutdown_timeout_s},
        )
        logging.shutdown()
        os._exit(1)


def _run_worker(app: object, settings: Settings) -> NoReturn:
    from streams.offsets import never_commit_over_unacknowledged

    never_commit_over_unacknowledged()  # at-least-once for messages acknowledged out of order
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # what start-up allocated is never garbage
    worker = QuietWorker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )
    worker.execute_from_commandline()


def run_worker(settings: Settings, index: int = 0) -> NoReturn:
    from streams.journeys import JourneyRole
    from streams.offsets import confirm_table_recovery_highwaters

    ensure_topics(settings)
    confirm_table_recovery_highwaters(settings)
    app, readiness = create_app(settings, "worker", index)
    register_ingest(app, settings)
    JourneyRole(app, settings, readiness).register()
    _run_worker(app, settings)


def run_sink(settings: Settings) -> NoReturn:
    from streams.sink import SinkRole
    from streams.webauth import WebAccess

    access = WebAccess.from_settings(settings)
    topic_ids = ensure_topics(settings)
    app, readiness = create_app(settings, "sink", access=access)
    role = SinkRole(app, settings, readiness, topic_ids, access)
    role.migrate()
    role.register()
    register_action_failures(role, settings)  # actions.dlq → action_failures
    _run_worker(app, settings)


def register_action_failures(role: object, settings: Settings) -> None:
    """The sink's agent for ``actions.dlq`` (streams/actions.py): the actions agent's dead
    letters into ``action_failures``, as ``journeys.dlq`` into ``journey_errors``."""
    from sinks.clickhouse.actions import ACTION_FAILURE_COLUMNS, action_failure_row
    from sinks.metrics import SINK_DUPLICATES_SKIPPED, SINK_ERRORS, SINK_ROWS
    from streams.actions import ACTIONS_DLQ
    from streams.sink import SinkRole

    assert isinstance(role, SinkRole)
    role.topic_ids |= ensure_topics(settings, (ACTIONS_DLQ,))
    for metric in (SINK_ROWS, SINK_ERRORS, SINK_DUPLICATES_SKIPPED):
        metric.labels("action_failures")

    def row(event: Any, topic_id: str) -> list[Any]:
        message = event.message
        return action_failure_row(
            message.value or b"", message.topic, topic_id, message.partition, message.offset
        )

    role._sink_agent(settings.topic(ACTIONS_DLQ), "action_failures", ACTION_FAILURE_COLUMNS, row)


def run_actions(settings: Settings) -> NoReturn:
    """The actions agent (streams/actions.py): its own consumer group, web port and table."""
    from pipeline.definitions import load_catalog
    from streams.actions import ActionsRole, action_topics
    from streams.offsets import confirm_table_recovery_highwaters

    catalog = load_catalog(settings.journeys_file)
    ensure_topics(settings, action_topics())
    confirm_table_recovery_highwaters(settings)
    app, readiness = create_app(settings, "actions")
    ActionsRole(app, settings, readiness, catalog).register()
    _run_worker(app, settings)
