"""Regenerate the reference documents that are derived from code (`make docs`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.contract import event_json_schema
from pipeline.settings import settings_reference

DOCS = Path(__file__).resolve().parent
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def main() -> None:
    (DOCS / "event-contract.schema.json").write_text(
        json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    )
    settings_doc = DOCS / "settings.md"
    text = settings_doc.read_text()
    block = f"{BEGIN}\n{settings_reference()}{END}"
    settings_doc.write_text(
        re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), block, text, flags=re.S)
    )


if __name__ == "__main__":
    main()
