"""Files holding secrets (the monitoring password and web config, the collector demo key, the
PII hash key) are mode 0600 from their first byte, and a loose existing one is set to 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.monitoring import ensure_password, secret_file, write_private
from streams.runtime import _secret_file


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """A umask that would leave a plain write_text readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_secret_file_is_0600_when_its_secret_is_written(tmp_path: Path) -> None:
    path = tmp_path / "new" / "collector-demo.key"
    seen: list[int] = []

    def generate() -> str:
        seen.append(mode(path))  # the file exists already: its mode while it is written
        return "s3cret"

    assert secret_file(path, generate) == "s3cret"
    assert seen == [0o600] and mode(path) == 0o600
    assert secret_file(path, lambda: "another") == "s3cret"  # kept, not regenerated
    key = _secret_file(tmp_path / "pii-hash.key")
    assert len(key) == 64 and mode(tmp_path / "pii-hash.key") == 0o600
    password = ensure_password(tmp_path / "monitoring" / "password")
    assert password and mode(tmp_path / "monitoring" / "password") == 0o600


def test_a_loose_existing_secret_file_is_set_to_0600_and_kept(tmp_path: Path) -> None:
    for read in (_secret_file, ensure_password):
        path = tmp_path / f"{read.__name__}.key"
        path.write_text("old-secret\n")
        path.chmod(0o644)
        assert read(path) == "old-secret" and mode(path) == 0o600


def test_a_private_file_is_never_readable_by_others_even_while_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "web.yml"
    path.write_text("old")
    path.chmod(0o644)  # replaced by a 0600 file, never rewritten in place
    modes: list[int] = []
    real_replace = os.replace

    def replace(source: str, target: Path) -> None:
        modes.append(stat.S_IMODE(os.stat(source).st_mode))  # written, not yet in place
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    write_private(path, "basic_auth_users: {}\n")
    assert modes == [0o600] and mode(path) == 0o600
    assert path.read_text() == "basic_auth_users: {}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["web.yml"]  # no temporary file left
