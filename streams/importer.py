"""``journeywatch import``: contact-centre and store exports (CSV or JSON Lines) into Kafka.

Bad lines are reported with the file and line and skipped; good ones are validated against
the event contract and produced to ``touchpoints.raw``. Re-importing a file is harmless:
event ids are derived from the rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from pipeline.contract import TouchpointEvent, validate_touchpoint
from pipeline.feeds import FEEDS, RowError
from pipeline.settings import Settings
from streams.producer import raw_producer
from streams.topics import RAW


@dataclass
class ImportReport:
    file: Path
    imported: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.errors)


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str, int]]:
    """(line number, row or a parse problem, bytes consumed so far)."""
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if fmt == "csv":
            reader = csv.DictReader(text)
            if not reader.fieldnames:
                return
            previous_line = 1
            for row in reader:
                line = previous_line + 1
                previous_line = reader.line_num
                if None in row:
                    fields = len(reader.fieldnames)
                    extra = len(row[None])
                    yield line, f"{fields + extra} fields, the header has {fields}", raw.tell()
                    continue
                yield line, dict(row), raw.tell()
        else:
            for number, line_text in enumerate(text, start=1):
                if not line_text.strip():
                    continue
                try:
                    value = orjson.loads(line_text)
                except orjson.JSONDecodeError as exc:
                    yield number, f"not valid JSON: {exc}", raw.tell()
                    continue
                if not isinstance(value, dict):
                    yield number, "expected a JSON object", raw.tell()
                    continue
                yield number, value, raw.tell()


def import_file(
    path: Path,
    kind: str,
    settings: Settings,
    *,
    fmt: str | None = None,
    dry_run: bool = False,
    progress: bool = True,
    send: Callable[[TouchpointEvent], None] | None = None,
) -> ImportReport:
    mapper = FEEDS[kind]
    if settings.pii_hash_key is None:
        raise click.ClickException(
            "JW_PII_HASH_KEY is not set: imports hash e-mail and phone with it"
        )
    key = settings.pii_hash_key.get_secret_value().encode()
    jsonl = kind == "touchpoints" or path.suffix in (".jsonl", ".ndjson", ".json")
    fmt = fmt or ("jsonl" if jsonl else "csv")
    report = ImportReport(path)
    producer = None
    if send is None and not dry_run:
        producer = raw_producer(settings)
        topic = settings.topic(RAW)

        def send(event: TouchpointEvent) -> None:
            assert producer is not None
            producer.send(topic, key=event.person_key().encode(), value=event.to_json())

    received_at = datetime.now(UTC)
    known: dict[str, dict[str, str]] = {}  # call or visit id → its caller's identifiers
    size = path.stat().st_size
    with click.progressbar(
        length=size, label=f"importing {path.name}", file=None if progress else io.StringIO()
    ) as bar:
        done = 0
        for line, row, position in _rows(path, fmt):
            bar.update(position - done)
            done = position
            if isinstance(row, str):
                report.errors.append(f"{path}:{line}: {row}")
                continue
            mapped = mapper(row, key, settings.phone_default_country_code, known)
            if isinstance(mapped, RowError):
                report.errors.append(f"{path}:{line}: {mapped}")
                continue
            result = validate_touchpoint(mapped, received_at, settings.touchpoint_max_age)
            if not isinstance(result, TouchpointEvent):
                report.errors.append(f"{path}:{line}: {result.describe()}")
                continue
            if send is not None:
                send(result)
            report.imported += 1
    if producer is not None:
        producer.flush()
        producer.close()
    return report
