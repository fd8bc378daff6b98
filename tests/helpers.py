"""Shared test helpers: ports, waiting on conditions, processes, HTTP, chdb in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

ClickHouse = tuple[Client, str]  # the ``clickhouse`` fixture: a client, a fresh database name

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out to outgoing
# connections (Kafka clients open many) can be taken between this check and the server's bind.
_LISTEN_PORTS = (20_000, 32_000)


def free_port(span: int = 1) -> int:
    """A loopback port, with the ``span - 1`` ports after it, that nothing listens on."""
    rng = random.SystemRandom()
    for _ in range(200):
        first = rng.randrange(_LISTEN_PORTS[0], _LISTEN_PORTS[1] - span)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + span):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {span} free loopback ports in {_LISTEN_PORTS}")


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# The sink's API tokens every test stack gets (jw_env): its pages and API need sign-in.
WEB_ADMIN_TOKEN = "test-web-admin-token-0123456789"
WEB_READ_TOKEN = "test-web-read-token-0123456789"


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[str]:
    """``server`` answering on a daemon thread while in the block, as its loopback base URL;
    shut down and closed after."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def http_get(
    url: str, timeout: float = 3.0, token: str | None = WEB_READ_TOKEN
) -> tuple[int, bytes]:
    """GET ``url``; the sink's read-only test token goes along (``token=None``: anonymous)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def http_json(url: str, token: str | None = WEB_READ_TOKEN) -> Any:
    status, body = http_get(url, token=token)
    return json.loads(body) if status == 200 else None


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric from a Prometheus text exposition, keyed by their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def jw_env(**settings: object) -> dict[str, str]:
    """The environment of a journeywatch process with these settings (``None``: unset), the
    sink's test tokens included unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JW_")}
    tokens = {"web_admin_token": WEB_ADMIN_TOKEN, "web_read_token": WEB_READ_TOKEN}
    env.update({f"JW_{k.upper()}": str(v) for k, v in (tokens | settings).items() if v is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_python(
    args: list[str], env: dict[str, str] | None, log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """``python ARGS`` in the repository (or ``cwd``), its output appended to ``log``."""
    with open(log, "ab") as handle:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd
        )


def start_cli(
    args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    return start_python(["-m", "streams.cli", *args], env, log, cwd)


def extract_release(commit: str, into: Path, *paths: str) -> Path:
    """The code of an earlier commit (``paths`` of it, or all), from git history, in ``into``:
    run from there with ``released_env``, it is that version as it was released."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, *paths], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def newest_release() -> str:
    """The commit of the newest release with golden records (tests/golden/released-<commit>),
    by commit time: the version a rolling upgrade starts from. (An older one stays for the
    formats it wrote; upgrading from it runs its own defects under today's traffic.)"""
    commits = [
        p.name.removeprefix("released-") for p in (REPO / "tests" / "golden").glob("released-*")
    ]
    times = subprocess.run(
        ["git", "-C", str(REPO), "show", "-s", "--format=%ct", *commits],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return max(zip((int(t) for t in times), commits, strict=True))[1]


def released_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for code run from ``extract_release``'s directory: its own modules (the
    working directory first on the path), plain Python (it has no compiled build)."""
    return {k: v for k, v in env.items() if k != "PYTHONPATH"} | {"JW_COMPILED": "0"}


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``journeywatch ARGS`` to completion, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def query_chdb(directory: Path, sql: str) -> list[list[Any]]:
    """Run a query on a chdb directory from a fresh process (one process per directory)."""
    code = (
        "import json, sys, clickhouse_connect\n"
        f"c = clickhouse_connect.get_client(dsn='chdb://{directory}')\n"
        "rows = c.query(sys.stdin.read()).result_rows\n"
        "print(json.dumps([list(r) for r in rows], default=str))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=sql,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"chdb query failed: {sql}\n{result.stderr[-3000:]}")
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic``, from the beginning to the current end."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.offsets import confirmed_end_offsets

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = confirmed_end_offsets(bootstrap, partitions)
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


class SegmentingProxy:
    """A loopback TCP proxy that cuts everything it forwards, both ways, into ``segment``-byte
    writes ``gap_s`` seconds apart (TCP_NODELAY on both sides): bodies reach the server in
    many small TCP segments, as over a slow or lossy network. A context manager; ``url`` is
    ``http://127.0.0.1:PORT`` for an HTTP target."""

    def __init__(self, target: tuple[str, int], segment: int = 512, gap_s: float = 0.002) -> None:
        import threading

        self.target = target
        self.segment = segment
        self.gap_s = gap_s
        self.port = free_port()
        self.connections = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SegmentingProxy:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()
        self._accepting.join(5)

    def _accept(self) -> None:
        import threading

        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.append(sock)
            self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink), name="proxy-pump", daemon=True
                )
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                for start in range(0, len(data), self.segment):
                    sink.sendall(data[start : start + self.segment])
                    time.sleep(self.gap_s)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()


def raw_http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is on a fresh loopback connection; the status, headers and body
    of the answer (read until the server closes or Content-Length is reached)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_http_response(sock)


def read_http_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.x response from ``sock`` (1xx interim answers skipped)."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a whole response head: {data[:200]!r}")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            continue
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "-1"))
        while length < 0 or len(data) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return status, headers, data if length < 0 else data[:length]
