"""The Faust application: one factory, two roles.

* ``worker``: the processing agents (ingest today; the journey engine plugs in here);
* ``sink``: the ClickHouse sink agents. In the embedded mode exactly one process may open the
  chdb directory, so the sink role owns it and also serves the status page and the read API.

Both serve ``/livez``, ``/readyz`` and ``/metrics`` on their Faust web server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import faust

from pipeline.settings import Settings
from sinks.metrics import set_worker_info
from streams import web
from streams.faust_internals import use_fetch_max_wait
from streams.topics import faust_broker_url, kafka_client_options
from streams.webauth import add_security_headers, guard

if TYPE_CHECKING:
    from streams.webauth import WebAccess

Role = Literal["worker", "sink", "actions"]
# each role is a consumer group of its own (and the prefix of its tables' changelogs)
APP_IDS: dict[str, str] = {
    "worker": "journeywatch",
    "sink": "journeywatch-sink",
    "actions": "journeywatch-actions",  # streams/actions.py
}


@dataclass
class Readiness:
    """What /readyz reports: every check must be true."""

    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def create_app(
    settings: Settings, role: Role, index: int = 0, access: WebAccess | None = None
) -> tuple[faust.App, Readiness]:
    """The Faust app of a process; ``access``: the sign-in rules its web server enforces
    (the sink's; streams/webauth.py). Every response carries the security headers."""
    app_id = settings.topic(APP_IDS[role])
    port = settings.worker_web_port + index if role == "worker" else settings.status_port
    if role == "actions":
        port = settings.actions_web_port
    datadir = settings.local_state_dir(role, index)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=faust_broker_url(settings),
        broker_credentials=faust_credentials(settings),
        # The worker's journey state lives in RocksDB (one database per partition, under
        # data_dir), backed by its changelog topic; the sink role has no tables.
        store="rocksdb://" if role == "worker" else "memory://",
        processing_guarantee="at_least_once",
        table_standby_replicas=settings.table_standby_replicas,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.consumer_session_timeout_s,
        broker_heartbeat_interval=settings.consumer_heartbeat_s,
        broker_rebalance_timeout=settings.consumer_rebalance_timeout_s,
        broker_commit_interval=1.0,
        # The journey agent holds touchpoints unacknowledged until the watermark passes them
        # (streams/journeys.py): a rebalance must not wait for those; uncommitted input is
        # simply read again by the partition's next owner.
        stream_wait_empty=False,
        producer_linger_ms=5,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=port,
        web_in_thread=False,
        web_application_options={"middlewares": [guard(access)] if access else []},
        datadir=str(datadir),
    )
    cast("Any", app.web).web_app.on_response_prepare.append(add_security_headers)
    use_fetch_max_wait(app, settings.consumer_fetch_max_wait_ms)
    readiness = Readiness(checks={"partitions_assigned": False})

    @app.on_rebalance_complete.connect
    async def _assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        readiness.checks["partitions_assigned"] = True

    set_worker_info(role)
    web.register_health(app, readiness)
    return app, readiness


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The Faust form of ``kafka_client_options``: what the app's consumers and producers
    (aiokafka, inside Faust) authenticate with."""
    options = kafka_client_options(settings)
    if not options:
        return None
    if "sasl_mechanism" in options:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=options.get("ssl_context"),
        )
    return faust.SSLCredentials(options["ssl_context"])
