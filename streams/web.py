"""HTTP endpoints served by every journeywatch process on its Faust web server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import faust
from faust.web import Request, Response, View

from sinks.metrics import exposition

if TYPE_CHECKING:
    from streams.app import Readiness


def register_health(app: faust.App, readiness: Readiness) -> None:
    @app.page("/livez")
    async def livez(self: View, request: Request) -> Response:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: View, request: Request) -> Response:
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives())
        body: dict[str, Any] = {
            "ready": readiness.ready,
            "checks": readiness.checks,
            "assigned_partitions": assigned,
        }
        return self.json(body, status=200 if readiness.ready else 503)

    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        names = cast("Any", request).query.getall("name[]", [])
        payload, content_type = exposition(names=names)
        return self.bytes(payload, content_type=content_type.split(";")[0])
