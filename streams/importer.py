"""``journeywatch import``: contact-centre and store exports (CSV or JSON Lines) and Amazon
Connect contact records (``--kind amazon-connect``, pipeline/connect.py) into Kafka.

Bad lines are reported with the file and line and skipped; good ones have the e-mail addresses
and phone numbers of their free text redacted or hashed (``JW_FREE_TEXT_PII``, as at the
collector), are validated against the event contract and produced to ``touchpoints.raw``.
Re-importing a file is harmless: event ids are derived from the rows (a contact record's from
its ContactId and step, so a re-delivered record gives the same events).
"""

from __future__ import annotations

import csv
import gzip
import io
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from kafka import TopicPartition

from pipeline.connect import ContactChains, iter_documents, map_contact_record
from pipeline.contract import TouchpointEvent, validate_touchpoint
from pipeline.feeds import RowError, map_touchpoint
from pipeline.importmap import ImportMapping, shipped_mapping
from pipeline.pii import FreeTextScrubber, redact_text
from pipeline.settings import Settings
from streams.offsets import committed_offsets
from streams.producer import raw_producer
from streams.topics import BY_PERSON, CONTROL_HEADER, RAW


@dataclass
class ImportReport:
    file: Path
    imported: int = 0
    errors: list[str] = field(default_factory=list)
    # per partition of touchpoints.raw, the offset of the last event produced there
    offsets: dict[int, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return len(self.errors)


def _rows(
    path: Path, fmt: str, mapping: ImportMapping | None = None
) -> Iterator[tuple[int, dict[str, Any] | str, int]]:
    """(line number, row or a parse problem, bytes consumed so far). A CSV file whose header
    lacks a column ``mapping`` needs is one problem, on line 1."""
    with path.open("rb") as raw:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        if fmt == "csv":
            delimiter = mapping.delimiter if mapping is not None else ","
            reader = csv.DictReader(text, delimiter=delimiter)
            if not reader.fieldnames:
                return
            if mapping is not None:
                missing = [c for c in mapping.required_columns() if c not in reader.fieldnames]
                if missing:
                    names = ", ".join(repr(c) for c in missing)
                    yield 1, f"the header has no column {names} ({mapping.describe()})", 0
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


AMAZON_CONNECT = "amazon-connect"


def _contact_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | str, int]]:
    """Amazon Connect contact records as Firehose writes them (JSON Lines, concatenated JSON
    or a JSON array; gzip-compressed when the name ends in .gz): (line, record or a problem,
    bytes of the file consumed so far, about). The file is read whole: Firehose's objects
    are at most its buffer size (128 MiB)."""
    data = path.read_bytes()
    size = len(data)
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            yield 1, f"not a gzip file: {exc}", size
            return
    text = data.decode("utf-8", errors="replace")
    length = max(len(text), 1)
    for line, record, read in iter_documents(text):
        yield line, record, size * read // length


def import_file(
    path: Path,
    kind: str,
    settings: Settings,
    *,
    fmt: str | None = None,
    dry_run: bool = False,
    progress: bool = True,
    send: Callable[[TouchpointEvent], None] | None = None,
    mapping: ImportMapping | None = None,
) -> ImportReport:
    """Import ``path`` as export ``kind``, or as ``mapping`` says (an import mapping file,
    pipeline/importmap.py; ``kind`` is then ignored)."""
    if settings.pii_hash_key is None:
        raise click.ClickException(
            "JW_PII_HASH_KEY is not set: imports hash e-mail and phone with it"
        )
    key = settings.pii_hash_key.get_secret_value().encode()
    free_text = FreeTextScrubber(settings.free_text_pii, key, settings.phone_default_country_code)
    jsonl = kind == "touchpoints" or path.suffix in (".jsonl", ".ndjson", ".json")
    fmt = fmt or ("jsonl" if jsonl else "csv")
    report = ImportReport(path)
    producer = None
    if send is None and not dry_run:
        producer = raw_producer(settings)
        topic = settings.topic(RAW)

        offsets = report.offsets

        def produced(metadata: Any) -> None:  # (the producer's I/O thread, one at a time)
            if metadata.offset > offsets.get(metadata.partition, -1):
                offsets[metadata.partition] = metadata.offset

        def send(event: TouchpointEvent) -> None:
            assert producer is not None
            future = producer.send(topic, key=event.person_key().encode(), value=event.to_json())
            future.add_callback(produced)

    received_at = datetime.now(UTC)
    country = settings.phone_default_country_code
    if kind == AMAZON_CONNECT:  # one contact record → the touchpoints of its contact
        chains = ContactChains()
        rows = _contact_records(path)

        def map_row(row: dict[str, Any]) -> list[dict[str, Any]] | RowError:
            return map_contact_record(row, key, country, chains)

    else:  # one row → one touchpoint
        if mapping is None and kind != "touchpoints":
            mapping = shipped_mapping(kind)
        mapper = map_touchpoint if mapping is None else mapping.map_row
        known: dict[str, dict[str, str]] = {}  # record (call, visit) → its customer's identifiers
        rows = _rows(path, fmt, mapping)

        def map_row(row: dict[str, Any]) -> list[dict[str, Any]] | RowError:
            mapped = mapper(row, key, country, known)
            return mapped if isinstance(mapped, RowError) else [mapped]

    size = path.stat().st_size
    with click.progressbar(
        length=size, label=f"importing {path.name}", file=None if progress else io.StringIO()
    ) as bar:
        done = 0
        for line, row, position in rows:
            bar.update(position - done)
            done = position
            # An error line may quote a value of the row: never an e-mail address or a phone
            # number (the report is printed and may be kept).
            if isinstance(row, str):
                report.errors.append(f"{path}:{line}: {redact_text(row)}")
                continue
            mapped = map_row(row)
            if isinstance(mapped, RowError):
                report.errors.append(f"{path}:{line}: {redact_text(str(mapped))}")
                continue
            # A row's touchpoints (a contact's) are produced all or none.
            events: list[TouchpointEvent] = []
            for item in mapped:
                free_text.event(item)
                result = validate_touchpoint(item, received_at, settings.touchpoint_max_age)
                if not isinstance(result, TouchpointEvent):
                    report.errors.append(f"{path}:{line}: {redact_text(result.describe())}")
                    break
                events.append(result)
            else:
                for event in events:
                    if send is not None:
                        send(event)
                    report.imported += 1
    if producer is not None:
        producer.flush()
        producer.close()
    return report


def end_backfill(
    settings: Settings,
    offsets: dict[int, int],
    timeout_s: float = 600.0,
    progress: bool = True,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Tell the journey workers that a backfill has ended: once the ingest has taken every
    event produced (``offsets``: per partition of ``touchpoints.raw``, the last one), one
    control record per partition of ``touchpoints.by_person``, after those events, moves
    that partition's event time to the wall clock (minus the lateness), as live traffic
    would: journeys still waiting on a time-out resolve now instead of hours of wall clock
    later. Returns the event time announced (epoch ms). Raises ``click.ClickException`` when
    the ingest does not catch up within ``timeout_s`` (the workers are not running?)."""
    raw = settings.topic(RAW)
    group = settings.topic("journeywatch")
    deadline = time.monotonic() + timeout_s
    with click.progressbar(
        length=len(offsets),
        label="waiting for the workers to ingest the import",
        file=None if progress else io.StringIO(),
    ) as bar:
        done: set[int] = set()
        while True:
            committed = committed_offsets(settings, group)
            for partition, last in offsets.items():
                taken = committed.get(TopicPartition(raw, partition), 0) > last
                if taken and partition not in done:
                    done.add(partition)
                    bar.update(1)
            if len(done) == len(offsets):
                break
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"the workers have not ingested the import after {timeout_s:.0f} s "
                    f"({len(offsets) - len(done)} of {len(offsets)} partitions of {raw} behind): "
                    "are `journeywatch worker` processes running? The events are in Kafka; "
                    "run `journeywatch import --end-of-backfill` with an empty file later"
                )
            time.sleep(0.5)  # polling the broker's committed offsets
    at = int(now().timestamp() * 1000)
    by_person = settings.topic(BY_PERSON)
    producer = raw_producer(settings)
    try:
        partitions = sorted(producer.partitions_for(by_person))
        body = orjson.dumps({"advance_to": at})
        for partition in partitions:
            producer.send(
                by_person,
                value=body,
                partition=partition,
                headers=[(CONTROL_HEADER, b"advance")],
            )
        producer.flush()
    finally:
        producer.close()
    return at
