"""The alerts' runbooks on the sink (``/runbooks/<name>``): an alert on the live page leads to
what to do about it, from the machine that shows it.

Every shipped alert's ``runbook_url`` names ``docs/runbooks/<name>.md`` in the project's
repository. Where that directory is at hand (a checkout: ``make run``), the sink serves the
runbook itself, as its Markdown text in a page (readable as it is, no renderer needed); where it
is not (the container image ships no docs), it redirects to the repository's copy.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

RUNBOOKS_DIR = Path(__file__).resolve().parent.parent / "docs" / "runbooks"
REPOSITORY_RUNBOOKS = "https://github.com/journeywatch/journeywatch/blob/main/docs/runbooks/"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}$")


def runbook_answer(name: str, directory: Path = RUNBOOKS_DIR) -> tuple[int, str, str | None]:
    """(status, HTML body, redirect location) for ``/runbooks/<name>``."""
    if not NAME.match(name):
        return 404, _page("No such runbook", "<p>No such runbook.</p>"), None
    path = directory / f"{name}.md"
    if not path.is_file():
        return 302, "", f"{REPOSITORY_RUNBOOKS}{name}.md"
    text = path.read_text(errors="replace")
    first = text.splitlines()[0].lstrip("# ").strip() if text.strip() else name
    body = (
        f'<p><a href="/">live page</a> · <a href="{REPOSITORY_RUNBOOKS}{name}.md" '
        f'rel="noopener noreferrer">in the repository</a></p><pre>{html.escape(text)}</pre>'
    )
    return 200, _page(first, body), None


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>journeywatch runbook: {html.escape(title)}</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:1.2rem auto;max-width:58rem;"
        "padding:0 1rem}pre{white-space:pre-wrap;font:0.95rem/1.45 ui-monospace,monospace}"
        "a{color:#0b5394}</style></head>"
        f"<body><main><h1>Runbook: {html.escape(title)}</h1>{body}</main></body></html>\n"
    )
