"""The sink's /runbooks/<name> (streams/runbooks.py): every shipped alert's runbook is served
from the checkout, escaped; a missing one redirects to the repository; a bad name is 404."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from streams.monitoring import RULES_DIR
from streams.runbooks import REPOSITORY_RUNBOOKS, runbook_answer


def test_every_shipped_alert_runbook_is_served() -> None:
    names = set()
    for rules in RULES_DIR.glob("*.yml"):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                url = rule.get("annotations", {}).get("runbook_url")
                if url:
                    assert url.startswith(REPOSITORY_RUNBOOKS), url
                    names.add(re.sub(r"\.md$", "", url.rsplit("/", 1)[1]))
    assert len(names) >= 10
    for name in names:
        status, body, location = runbook_answer(name)
        assert (status, location) == (200, None), name
        assert "<h1>Runbook: " in body and "<pre>" in body


def test_text_is_escaped_missing_redirects_bad_names_are_404(tmp_path: Path) -> None:
    (tmp_path / "x.md").write_text("# X <script>alert(1)</script>\n\n<b>do</b> this\n")
    status, body, _ = runbook_answer("x", tmp_path)
    assert status == 200 and "<script>" not in body and "&lt;b&gt;do&lt;/b&gt;" in body
    assert runbook_answer("gone", tmp_path) == (302, "", f"{REPOSITORY_RUNBOOKS}gone.md")
    for bad in ("../secrets", "X", "a/b", "", ".hidden"):
        assert runbook_answer(bad, tmp_path)[0] == 404, bad
