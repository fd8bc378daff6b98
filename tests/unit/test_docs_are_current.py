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
