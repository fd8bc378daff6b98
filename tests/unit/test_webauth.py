"""Sign-in rules of the sink (streams/webauth.py): tokens and their roles, session cookies,
CSRF tokens, the trusted proxy, and what the sink refuses to start with."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pipeline.settings import Settings, to_environment
from streams.webauth import (
    WebAccess,
    allows,
    client_token,
    configured_tokens,
    safe_next,
    startup_problem,
    with_generated_token,
)

ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def access(clock: Clock | None = None, **settings: object) -> WebAccess:
    made = WebAccess.from_settings(
        Settings(web_admin_token=ADMIN, web_read_token=READ, **settings)  # type: ignore[arg-type]
    )
    if clock is not None:
        made.clock = clock
    return made


def test_roles_are_ordered() -> None:
    assert allows("admin", "read") and allows("admin", "admin") and allows("read", "read")
    assert not allows("read", "admin")


def test_each_token_has_its_role_and_nothing_else_has_one() -> None:
    rules = access()
    assert rules.token_role(ADMIN) == "admin" and rules.token_role(READ) == "read"
    for wrong in ("", ADMIN[:-1], ADMIN + "x", READ.upper(), "Bearer " + ADMIN):
        assert rules.token_role(wrong) is None
    assert rules.principal(f"Bearer {READ}", None, None, None).role == "read"  # type: ignore[union-attr]
    assert rules.principal(f"bearer {ADMIN}", None, None, None).role == "admin"  # type: ignore[union-attr]
    assert rules.principal(f"Basic {ADMIN}", None, None, None) is None
    # a wrong bearer token is refused even with a valid session cookie beside it
    cookie = rules.issue_session("admin token", "admin")
    assert rules.principal("Bearer nope", cookie, None, None) is None
    assert rules.principal(None, None, None, None) is None


def test_tokens_from_secret_files_and_their_checks(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text(ADMIN + "\n")
    (tmp_path / "read").write_text(READ)
    settings = Settings(
        web_admin_token_file=tmp_path / "admin", web_read_token_file=tmp_path / "read"
    )
    assert configured_tokens(settings) == {"admin": ADMIN, "read": READ}
    (tmp_path / "short").write_text("short")
    with pytest.raises(ValueError, match="16 characters"):
        configured_tokens(Settings(web_admin_token_file=tmp_path / "short"))
    with pytest.raises(ValueError, match="must differ"):
        configured_tokens(Settings(web_admin_token=ADMIN, web_read_token=ADMIN))
    with pytest.raises(ValueError):
        Settings(web_admin_token="too-short")


def test_a_session_cookie_is_signed_expires_and_can_be_revoked() -> None:
    clock = Clock()
    rules = access(clock, web_session_hours=1)
    cookie = rules.issue_session("read token", "read")
    seen = rules.read_session(cookie)
    assert seen is not None and (seen.user, seen.role, seen.via) == (
        "read token",
        "read",
        "session",
    )
    # tampering with any part (the role above all) breaks the signature
    body, _, signature = cookie.rpartition(".")
    assert rules.read_session(body.replace(".read.", ".admin.") + "." + signature) is None
    assert rules.read_session(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")) is None
    assert rules.read_session("garbage") is None and rules.read_session("") is None
    # another sink with other tokens does not accept it; the same tokens do (restarts)
    other = WebAccess.from_settings(Settings(web_admin_token="another-admin-token-0123456"))
    assert other.read_session(cookie) is None
    assert access(clock).read_session(cookie) is not None
    clock.now += 3599
    assert rules.read_session(cookie) is not None
    clock.now += 2
    assert rules.read_session(cookie) is None  # expired
    fresh = rules.issue_session("admin token", "admin")
    rules.revoke_sessions()
    assert rules.read_session(fresh) is None
    clock.now += 5
    assert rules.read_session(rules.issue_session("admin token", "admin")) is not None


def test_csrf_tokens_belong_to_one_session_and_bearer_tokens_need_none() -> None:
    rules = access()
    one = rules.read_session(rules.issue_session("admin token", "admin"))
    two = rules.read_session(rules.issue_session("admin token", "admin"))
    assert one is not None and two is not None
    assert rules.csrf_ok(one, rules.csrf_token(one))
    assert not rules.csrf_ok(one, rules.csrf_token(two))
    assert not rules.csrf_ok(one, None) and not rules.csrf_ok(one, "")
    bearer = rules.principal(f"Bearer {ADMIN}", None, None, None)
    assert bearer is not None and rules.csrf_ok(bearer, None)
    # the sign-in form's token is bound to the nonce cookie it was served with
    assert rules.signin_ok("nonce-1", rules.signin_csrf("nonce-1"))
    assert not rules.signin_ok("nonce-2", rules.signin_csrf("nonce-1"))
    assert not rules.signin_ok(None, rules.signin_csrf("nonce-1"))


def test_the_proxy_user_header_counts_only_from_a_trusted_proxy() -> None:
    rules = access(
        web_auth="proxy",
        web_trusted_proxies=["10.0.0.7", "10.1.0.0/16"],
        web_proxy_admins=["ops@example.com"],
    )
    alice = rules.principal(None, None, "10.1.2.3", "alice@example.com")
    assert alice is not None and (alice.user, alice.role, alice.via) == (
        "alice@example.com",
        "read",
        "proxy",
    )
    ops = rules.principal(None, None, "10.0.0.7", "ops@example.com")
    assert ops is not None and ops.role == "admin"
    for remote in ("10.0.0.8", "127.0.0.1", None, "not-an-address"):
        assert rules.principal(None, None, remote, "ops@example.com") is None
    assert rules.principal(None, None, "10.0.0.7", "  ") is None
    # the header means nothing in token mode, whoever sends it
    tokens_only = access(web_trusted_proxies=["10.0.0.7"])
    assert tokens_only.principal(None, None, "10.0.0.7", "ops@example.com") is None
    proxy_csrf = rules.csrf_token(alice)
    assert rules.csrf_ok(alice, proxy_csrf) and not rules.csrf_ok(ops, proxy_csrf)


def test_open_paths() -> None:
    rules = access()
    assert all(rules.is_open(p) for p in ("/livez", "/readyz", "/metrics", "/signin"))
    assert not any(rules.is_open(p) for p in ("/", "/map", "/api/v1/stats", "/signout"))
    protected = access(web_protect_health=True)
    assert not any(protected.is_open(p) for p in ("/livez", "/readyz", "/metrics"))
    off = WebAccess.from_settings(Settings(web_auth="off"))
    assert off.is_open("/api/v1/stats")
    anyone = off.principal(None, None, None, None)
    assert anyone is not None and anyone.role == "admin"


def test_after_sign_in_only_a_path_of_this_site() -> None:
    assert safe_next("/map/online_purchase?since=1h") == "/map/online_purchase?since=1h"
    for bad in (None, "", "https://evil.example", "//evil.example", "/\\evil.example", "/\nx"):
        assert safe_next(bad) == "/"


def test_the_sink_refuses_a_public_address_without_sign_in(tmp_path: Path) -> None:
    public = Settings(web_host="0.0.0.0", data_dir=tmp_path)
    problem = startup_problem(public)
    assert problem is not None
    for setting in ("JW_WEB_ADMIN_TOKEN", "JW_WEB_READ_TOKEN", "JW_WEB_AUTH=off", "JW_WEB_HOST"):
        assert setting in problem
    assert startup_problem(public.model_copy(update={"web_auth": "off"})) is None
    assert startup_problem(Settings(web_host="0.0.0.0", web_admin_token=ADMIN)) is None
    proxy = Settings(web_host="0.0.0.0", web_auth="proxy")
    assert "JW_WEB_TRUSTED_PROXIES" in (startup_problem(proxy) or "")
    bad = proxy.model_copy(update={"web_trusted_proxies": ["nonsense"]})
    assert "JW_WEB_TRUSTED_PROXIES" in (startup_problem(bad) or "")
    assert startup_problem(Settings(data_dir=tmp_path)) is None  # loopback: generated


def test_on_loopback_an_admin_token_is_generated_once_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    signed = with_generated_token(settings)
    token_file = tmp_path / "web-admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert signed.web_admin_token is not None
    token = signed.web_admin_token.get_secret_value()
    assert len(token) >= 32 and token == token_file.read_text().strip()
    assert with_generated_token(settings).web_admin_token == signed.web_admin_token  # kept
    assert client_token(settings) == token  # the CLI's --api finds it
    # configured tokens, or another address, or another mode: nothing generated
    for other in (
        Settings(data_dir=tmp_path / "a", web_read_token=READ),
        Settings(data_dir=tmp_path / "b", web_host="0.0.0.0"),
        Settings(data_dir=tmp_path / "c", web_auth="off"),
    ):
        assert with_generated_token(other) is other
        assert not (other.data_dir / "web-admin.token").exists()
    assert client_token(Settings(data_dir=tmp_path / "a", web_read_token=READ)) == READ


def test_list_settings_reach_child_processes_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(web_trusted_proxies=["10.0.0.7"], web_proxy_admins=["ops"])
    env = to_environment(settings)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    assert again.web_trusted_proxies == ["10.0.0.7"] and again.web_proxy_admins == ["ops"]


def test_a_read_token_alone_cannot_mint_an_admin_session() -> None:
    """With only the read-only token configured its holder knows every input of the signing
    key: a session claiming the admin role is refused however it is signed."""
    rules = WebAccess.from_settings(Settings(web_read_token=READ))
    forged = rules.issue_session("admin token", "admin")  # signed with the real key
    assert rules.read_session(forged) is None
    assert rules.read_session(rules.issue_session("read token", "read")) is not None
    # with both tokens the key needs the admin token too
    both = access()
    assert both.key != rules.key
    assert both.read_session(forged) is None


def test_journeywatch_sink_names_the_token_file_never_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`journeywatch sink` on loopback without a token generates one and says where it is;
    on another address it refuses with what to set."""
    import click

    from streams.cli import _signed_in_settings

    signed = _signed_in_settings(Settings(data_dir=tmp_path))
    assert signed.web_admin_token is not None
    said = capsys.readouterr().err
    assert str(tmp_path / "web-admin.token") in said and "/signin" in said
    assert signed.web_admin_token.get_secret_value() not in said
    with pytest.raises(click.ClickException, match="JW_WEB_ADMIN_TOKEN"):
        _signed_in_settings(Settings(data_dir=tmp_path, web_host="0.0.0.0"))
