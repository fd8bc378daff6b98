"""Generated reference documents must match the code that they describe."""

from __future__ import annotations

import json

from pipeline.contract import event_json_schema
from pipeline.settings import settings_reference
from tests.helpers import REPO


def test_event_contract_json_schema_is_current() -> None:
    published = json.loads((REPO / "docs" / "event-contract.schema.json").read_text())
    assert published == event_json_schema(), "docs are stale: run `make docs`"


def test_settings_reference_is_current() -> None:
    text = (REPO / "docs" / "settings.md").read_text()
    assert settings_reference() in text, "docs/settings.md is stale: run `make docs`"


def test_every_test_the_failure_modes_page_names_exists() -> None:
    import re

    text = (REPO / "docs" / "operations" / "failure-modes.md").read_text()
    named = set(re.findall(r"\b(test_\w+)`", text))
    files = set(re.findall(r"(tests/[\w/]+\.py)", text))
    assert len(named) > 15 and files
    assert all((REPO / f).exists() for f in files), files
    source = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    defined = set(re.findall(r"^def (test_\w+)", source, re.MULTILINE))
    assert named - defined == set(), "docs/operations/failure-modes.md names missing tests"
