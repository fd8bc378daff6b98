"""Local Prometheus and Alertmanager for ``journeywatch run``, when their binaries are installed
(Debian: ``apt-get install prometheus prometheus-alertmanager``).

They scrape every process of the embedded run with journeywatch's own rules, so the alerts
that page on-call in production can be watched firing on one machine.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from streams.process import child_process_options

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules"


@dataclass
class LocalMonitoring:
    prometheus_url: str
    alertmanager_url: str
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def binaries() -> tuple[str, str] | None:
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    return (prometheus, alertmanager) if prometheus and alertmanager else None


def start_local_monitoring(
    directory: Path,
    targets: dict[str, list[str]],
    prometheus_port: int,
    alertmanager_port: int,
    log_dir: Path,
) -> LocalMonitoring | None:
    """Start both with generated configs; None when the binaries are not installed."""
    found = binaries()
    if found is None:
        return None
    prometheus_bin, alertmanager_bin = found
    directory.mkdir(parents=True, exist_ok=True)
    alertmanager_url = f"http://127.0.0.1:{alertmanager_port}"
    prometheus_config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
        "rule_files": [str(path) for path in sorted(RULES_DIR.glob("*.yml"))],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": addresses}]}
            for job, addresses in targets.items()
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config, sort_keys=False))
    # Locally, alerts are shown, not delivered: one receiver without integrations.
    alertmanager_config = {
        "route": {"receiver": "local", "group_by": ["alertname", "journey", "channel"]},
        "receivers": [{"name": "local"}],
    }
    (directory / "alertmanager.yml").write_text(
        yaml.safe_dump(alertmanager_config, sort_keys=False)
    )
    processes = []
    for name, command in (
        (
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--storage.tsdb.retention.time=1d",
            ],
        ),
        (
            "alertmanager",
            [
                alertmanager_bin,
                f"--config.file={directory / 'alertmanager.yml'}",
                f"--storage.path={directory / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                "--cluster.listen-address=",
            ],
        ),
    ):
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child writes it
        processes.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, **child_process_options()
            )
        )
    return LocalMonitoring(f"http://127.0.0.1:{prometheus_port}", alertmanager_url, processes)
