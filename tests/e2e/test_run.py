"""`journeywatch run`, as `make run` starts it: ready, filling ClickHouse, and stopping cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO, free_port, http_get, http_json, jw_env, wait_until

pytestmark = pytest.mark.e2e


def test_run_serves_fills_clickhouse_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    status_port, worker_port, broker_port = free_port(), free_port(), free_port()
    env = jw_env(
        status_port=status_port,
        worker_web_port=worker_port,
        embedded_broker_port=broker_port,
        data_dir=tmp_path / "var",
        clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}",
        simulate_rate=200,
    )
    out = open(tmp_path / "run.out", "wb")  # noqa: SIM115
    run = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run"],
        env=env,
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{status_port}"
    try:

        def ready() -> bool:
            assert run.poll() is None, (tmp_path / "run.out").read_text()
            return http_get(f"{base}/readyz")[0] == 200

        wait_until(ready, 120, "the sink's /readyz")
        assert http_get(f"http://127.0.0.1:{worker_port}/readyz")[0] == 200
        assert http_get(f"{base}/livez")[0] == 200
        status, page = http_get(f"{base}/")
        assert status == 200 and b"journeywatch" in page

        first = wait_until(
            lambda: (http_json(f"{base}/api/v1/stats") or {}).get("touchpoints"),
            60,
            "the first touchpoints in ClickHouse",
        )
        wait_until(
            lambda: (http_json(f"{base}/api/v1/stats") or {})["touchpoints"] > first + 100,
            60,
            "the touchpoint count to grow",
        )
        banner = (tmp_path / "run.out").read_text()
        assert f"{base}/" in banner and "Press Ctrl-C to stop." in banner

        family = [run.pid] + [
            child.pid for child in psutil.Process(run.pid).children(recursive=True)
        ]
        assert len(family) >= 4  # run, broker, sink, worker
        run.send_signal(signal.SIGINT)
        assert run.wait(90) == 0
        assert not [
            pid
            for pid in family
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
        ]
        assert "Stopped." in (tmp_path / "run.out").read_text()
    finally:
        if run.poll() is None:
            for child in psutil.Process(run.pid).children(recursive=True):
                child.kill()
            run.kill()
        out.close()
