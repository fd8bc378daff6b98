"""Headless Chromium for browser tests: Debian's /usr/bin/chromium driven by Playwright.

Console errors and uncaught page errors are collected; the test asserts there are none.
Screenshots go to ``test-artifacts/`` (kept by CI as artifacts).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ARTIFACTS

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Browser:
    page: Any
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """Every ``data-figure`` element with a ``data-value``, as numbers (None for '')."""
        pairs = self.page.eval_on_selector_all(
            "[data-figure][data-value]",
            "nodes => nodes.map(n => [n.dataset.figure, n.dataset.value])",
        )
        return {name: (float(v) if "." in v else int(v)) if v else None for name, v in pairs}

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@contextmanager
def chromium(width: int = 1440, height: int = 900, offline: bool = False) -> Iterator[Browser]:
    """A fresh headless Chromium page; ``offline`` blocks every request that is not loopback."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            if offline:
                context.route(
                    "**/*",
                    lambda route: (
                        route.continue_()
                        if route.request.url.startswith(("http://127.0.0.1", "file:", "data:"))
                        else route.abort()
                    ),
                )
            page = context.new_page()
            result = Browser(page)
            page.on(
                "console",
                lambda message: (
                    result.errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: result.errors.append(str(error)))
            yield result
        finally:
            browser.close()


def sign_in(page: Any, base: str, token: str, path: str = "/") -> None:
    """Open ``path`` on the sink at ``base`` through its sign-in page, as a person would: the
    page asks for a token, the session cookie does the rest."""
    page.goto(base + path)
    if "/signin" in page.url:
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(base + path)
