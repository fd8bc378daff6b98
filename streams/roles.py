"""Start one journeywatch process role (worker or sink) as a Faust worker."""

from __future__ import annotations

import gc
import logging
from typing import Any, NoReturn

from pipeline.settings import Settings
from streams.app import create_app
from streams.faust_internals import QuietWorker
from streams.ingest import register_ingest
from streams.logs import logging_config
from streams.process import GC_THRESHOLDS
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def _run_worker(app: object, settings: Settings) -> NoReturn:
    from streams.faust_internals import never_commit_over_unacknowledged

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
    from streams.faust_internals import confirm_table_recovery_highwaters
    from streams.journeys import JourneyRole

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
    from streams.faust_internals import confirm_table_recovery_highwaters

    catalog = load_catalog(settings.journeys_file)
    ensure_topics(settings, action_topics())
    confirm_table_recovery_highwaters(settings)
    app, readiness = create_app(settings, "actions")
    ActionsRole(app, settings, readiness, catalog).register()
    _run_worker(app, settings)
