"""Sign-in for the sink's pages and API, and the security headers of every response.

Who may do what (docs/operations/security.md):

* an API client sends ``Authorization: Bearer <token>``: the admin or the read-only token;
* a browser signs in at ``/signin`` with a token and gets a session cookie (HTTP-only,
  ``SameSite=Lax``, ``Secure``), signed with a key derived from the tokens, so a sink restart
  keeps sessions and rotating a token ends every session;
* behind a single sign-on proxy (``web_auth=proxy``) the proxy's user header is believed from
  the configured proxy addresses only;
* ``/livez``, ``/readyz`` and ``/metrics`` are open unless ``web_protect_health``.

Every state-changing request a browser sends by itself (cookie or proxy credentials) carries
the CSRF token of its session (``X-CSRF-Token`` header or ``csrf`` form field); a bearer token
is never sent by a browser on its own, so it needs none. Roles are ordered: ``admin`` may do
everything ``read`` may. A handler that changes or erases data is wrapped in
``requires("admin")``.

Tokens and cookies are compared in constant time and never logged: the sink keeps no access
log, and a refused sign-in is logged with the client's address only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from aiohttp import web

from pipeline.settings import Settings

log = logging.getLogger(__name__)

Role = Literal["read", "admin"]
Via = Literal["token", "session", "proxy", "open"]
_RANK: dict[str, int] = {"read": 1, "admin": 2}

SESSION_COOKIE = "jw_session"
SIGNIN_COOKIE = "jw_signin"  # the sign-in form's own CSRF nonce (login CSRF)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
PRINCIPAL = "jw_principal"  # where the middleware leaves the caller on the request
HEALTH_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
SIGNIN_PATHS = frozenset({"/signin"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGNIN_FORM_S = 600  # how long a sign-in form stays valid
GENERATED_TOKEN_FILE = "web-admin.token"  # noqa: S105 - a file name
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# Pages load their scripts from /static; styles may be inline (the map's SVG uses style
# attributes). No inline script, no framing, no plug-ins, requests to this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin: links to runbooks and dashboards leak no URL of ours, while same-origin
    # POSTs keep their Origin header
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def allows(role: Role, needed: Role) -> bool:
    """Whether ``role`` may do what needs ``needed``."""
    return _RANK[role] >= _RANK[needed]


@dataclass(frozen=True)
class Principal:
    """Who is asking: ``user`` (``admin token``, ``read token`` or the proxy's user name), the
    role, how they proved it, and (for a browser session) the session's nonce."""

    user: str
    role: Role
    via: Via
    session: str | None = None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_secret(value: Any, path: Path | None) -> str | None:
    if value is not None:
        return str(value.get_secret_value())
    if path is not None:
        text = path.read_text().strip()
        if len(text) < 16:
            raise ValueError(f"{path}: a token needs at least 16 characters")
        return text
    return None


def configured_tokens(settings: Settings) -> dict[Role, str]:
    """The admin and read-only tokens, from the settings or their files."""
    tokens: dict[Role, str] = {}
    admin = _read_secret(settings.web_admin_token, settings.web_admin_token_file)
    read = _read_secret(settings.web_read_token, settings.web_read_token_file)
    if admin:
        tokens["admin"] = admin
    if read:
        tokens["read"] = read
    if admin and read and hmac.compare_digest(admin.encode(), read.encode()):
        raise ValueError("JW_WEB_ADMIN_TOKEN and JW_WEB_READ_TOKEN must differ")
    return tokens


def startup_problem(settings: Settings) -> str | None:
    """Why the sink must not serve with these settings (a message saying what to set), or
    None. Loopback without tokens is no problem: a token is generated (``generated_token``)."""
    if settings.web_auth == "off":
        return None
    if settings.web_auth == "proxy":
        if not settings.web_trusted_proxies:
            return (
                "JW_WEB_AUTH=proxy needs JW_WEB_TRUSTED_PROXIES: the addresses of the sign-on "
                'proxy whose user header is believed, e.g. ["10.0.0.7"]'
            )
        try:
            _networks(settings.web_trusted_proxies)
        except ValueError as exc:
            return f"JW_WEB_TRUSTED_PROXIES: {exc}"
        return None
    try:
        tokens = configured_tokens(settings)
    except (OSError, ValueError) as exc:
        return f"cannot read the web tokens: {exc}"
    if tokens or is_loopback(settings.web_host):
        return None
    return (
        f"the sink would serve customer data on {settings.web_host} without sign-in: set "
        "JW_WEB_ADMIN_TOKEN (or JW_WEB_ADMIN_TOKEN_FILE) and, for viewers, JW_WEB_READ_TOKEN "
        "(or JW_WEB_READ_TOKEN_FILE), at least 16 random characters each; or put a sign-on "
        "proxy in front (JW_WEB_AUTH=proxy, JW_WEB_TRUSTED_PROXIES); or bind 127.0.0.1 "
        "(JW_WEB_HOST); or, only when something else signs people in, JW_WEB_AUTH=off"
    )


def generated_token_path(settings: Settings) -> Path:
    return settings.data_dir / GENERATED_TOKEN_FILE


def with_generated_token(settings: Settings) -> Settings:
    """On loopback, sign-in by tokens and no token configured: the admin token kept in
    data_dir/web-admin.token (random, mode 0600, generated the first time)."""
    if settings.web_auth != "tokens" or not is_loopback(settings.web_host):
        return settings
    if configured_tokens(settings):
        return settings
    from pydantic import SecretStr

    from streams.monitoring import secret_file

    token = secret_file(generated_token_path(settings), lambda: secrets.token_urlsafe(32))
    return settings.model_copy(update={"web_admin_token": SecretStr(token)})


def client_token(settings: Settings) -> str | None:
    """The token a command (``journeywatch map --api``, ``replay raw --api``, the run's own
    checks) sends: the read-only one, else the admin one, else the one generated for a run."""
    tokens = configured_tokens(settings)
    if "read" in tokens or "admin" in tokens:
        return tokens.get("read") or tokens["admin"]
    try:
        return generated_token_path(settings).read_text().strip() or None
    except OSError:
        return None


def _networks(addresses: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(a.strip(), strict=False) for a in addresses]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


@dataclass
class WebAccess:
    """The sink's sign-in rules, built once from the settings (``from_settings``)."""

    mode: Literal["tokens", "proxy", "off"]
    tokens: dict[Role, bytes]
    key: bytes  # signs sessions and derives CSRF tokens
    session_s: float
    cookie_secure: bool = True
    protect_health: bool = False
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    proxy_header: str = "X-Forwarded-User"
    proxy_admins: frozenset[str] = frozenset()
    not_before: float = 0.0  # sessions issued earlier are refused (``revoke_sessions``)
    clock: Callable[[], float] = time.time

    @classmethod
    def from_settings(cls, settings: Settings) -> WebAccess:
        tokens = {role: value.encode() for role, value in configured_tokens(settings).items()}
        if tokens:
            # from the tokens: every replica and every restart agree, and a new token ends
            # every session signed with the old one
            material = b"\0".join(tokens.get(r, b"") for r in ("admin", "read"))
            key = hmac.new(material, b"journeywatch web session v1", hashlib.sha256).digest()
        else:
            key = secrets.token_bytes(32)  # proxy only: CSRF tokens for this process's life
        return cls(
            mode=settings.web_auth,
            tokens=tokens,
            key=key,
            session_s=settings.web_session_hours * 3600,
            cookie_secure=settings.web_cookie_secure,
            protect_health=settings.web_protect_health,
            proxies=_networks(settings.web_trusted_proxies),
            proxy_header=settings.web_proxy_user_header,
            proxy_admins=frozenset(settings.web_proxy_admins),
        )

    # --- who is asking -------------------------------------------------------------------
    def is_open(self, path: str) -> bool:
        """Paths served to anyone: the sign-in page; health and metrics unless protected."""
        if self.mode == "off" or path in SIGNIN_PATHS:
            return True
        return path in HEALTH_PATHS and not self.protect_health

    def token_role(self, presented: str) -> Role | None:
        """The role of ``presented`` when it is one of the tokens (constant-time: every
        token is compared, whichever matches)."""
        given = presented.encode()
        found: Role | None = None
        for role, token in self.tokens.items():
            if hmac.compare_digest(given, token) and (found is None or allows(role, found)):
                found = role
        return found

    def principal(
        self,
        authorization: str | None,
        cookie: str | None,
        remote: str | None,
        proxy_user: str | None,
    ) -> Principal | None:
        """Who sent a request with these credentials, or None (anonymous)."""
        if self.mode == "off":
            return Principal("anyone", "admin", "open")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                role = self.token_role(value.strip())
                return Principal(f"{role} token", role, "token") if role else None
            return None
        if self.mode == "proxy" and proxy_user and self.trusted(remote):
            user = proxy_user.strip()
            if user:
                admin = "*" in self.proxy_admins or user in self.proxy_admins
                return Principal(user, "admin" if admin else "read", "proxy")
        if cookie:
            return self.read_session(cookie)
        return None

    def still_allowed(self, request: Any) -> bool:
        """Whether ``request``'s credentials still sign it in (asked again during a long
        answer, the event stream: a session revoked or expired meanwhile ends it)."""
        return (
            self.is_open(request.path)
            or self.principal(
                request.headers.get("Authorization"),
                request.cookies.get(SESSION_COOKIE),
                request.remote,
                request.headers.get(self.proxy_header),
            )
            is not None
        )

    def trusted(self, remote: str | None) -> bool:
        if not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self.proxies)

    # --- sessions ------------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def issue_session(self, user: str, role: Role) -> str:
        """A session cookie's value: role, user, issued and expiry times, a random nonce,
        signed."""
        now = int(self.clock())
        body = ".".join(
            ["v1", role, _b64(user), str(now), str(now + int(self.session_s)), _nonce()]
        )
        return f"{body}.{self._sign(body)}"

    def read_session(self, value: str) -> Principal | None:
        """The session of a cookie value, when it is ours, unexpired and not revoked."""
        body, _, signature = value.rpartition(".")
        if not body or not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            version, role, user, issued, expires, nonce = body.split(".")
            # a role only its token signs in as: with the read-only token alone configured,
            # its holder knows the whole key, and must not mint an admin session with it
            if version != "v1" or role not in self.tokens:
                return None
            now = self.clock()
            if int(issued) < self.not_before or now >= int(expires):
                return None
            return Principal(_unb64(user), role, "session", nonce)
        except ValueError:
            return None

    def revoke_sessions(self) -> None:
        """Refuse every session issued until now (in this process)."""
        self.not_before = self.clock() + 1

    # --- CSRF ----------------------------------------------------------------------------
    def csrf_token(self, principal: Principal) -> str:
        """The CSRF token of a browser's credentials: bound to its session (or proxy user)."""
        subject = principal.session if principal.via == "session" else f"proxy:{principal.user}"
        return self._sign(f"csrf.{subject}")

    def csrf_ok(self, principal: Principal, presented: str | None) -> bool:
        """Whether a state-changing request with these credentials may go through: a bearer
        token (or no sign-in at all) needs no CSRF token; a browser's credentials do."""
        if principal.via in ("token", "open"):
            return True
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(principal).encode())

    def signin_csrf(self, nonce: str) -> str:
        return self._sign(f"signin.{nonce}")

    def signin_ok(self, nonce: str | None, presented: str | None) -> bool:
        """The sign-in form's CSRF field matches the nonce cookie the form was served with."""
        if not nonce or not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.signin_csrf(nonce).encode())


def _nonce() -> str:
    return secrets.token_urlsafe(18)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 0x20 or c == "\\" for c in value):
        return "/"
    return value


# --- aiohttp -----------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _wants_page(request: web.Request) -> bool:
    """A browser navigating to a page (redirected to sign in), not an API call (401)."""
    if request.method not in ("GET", "HEAD") or request.path.startswith("/api/"):
        return False
    return request.path not in HEALTH_PATHS


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def _presented_csrf(request: web.Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()  # cached: the handler reads it again
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def guard(access: WebAccess) -> Any:
    """The middleware: anonymous requests get 401 (APIs) or the sign-in page (pages); a
    browser's state-changing request needs its CSRF token."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if access.is_open(request.path):
            if access.mode == "off":
                request[PRINCIPAL] = Principal("anyone", "admin", "open")
            return await handler(request)
        principal = access.principal(
            request.headers.get("Authorization"),
            request.cookies.get(SESSION_COOKIE),
            request.remote,
            request.headers.get(access.proxy_header),
        )
        if principal is None:
            if _wants_page(request):
                target = "/signin?" + urllib.parse.urlencode({"next": request.path_qs})
                return _see_other(target)
            return _json_error(
                401,
                "sign in: send Authorization: Bearer <token> (JW_WEB_READ_TOKEN or "
                "JW_WEB_ADMIN_TOKEN), or sign in at /signin",
                **{"WWW-Authenticate": 'Bearer realm="journeywatch"'},
            )
        if request.method not in SAFE_METHODS and principal.via in ("session", "proxy"):
            if request.headers.get("Sec-Fetch-Site") == "cross-site":
                return _json_error(403, "cross-site request refused")
            if not access.csrf_ok(principal, await _presented_csrf(request)):
                return _json_error(
                    403,
                    f"CSRF token missing or wrong: send the {CSRF_HEADER} header (or the "
                    f"{CSRF_FIELD} form field) from GET /api/v1/auth/session",
                )
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


async def add_security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, the event stream and errors included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def principal_of(request: Any) -> Principal | None:
    return cast("Principal | None", request.get(PRINCIPAL))


def requires(role: Role) -> Callable[[F], F]:
    """A page or API handler (``(view, request, ...)``) that needs ``role``: 403 otherwise.
    Every endpoint that changes or erases data is wrapped in ``requires("admin")``."""

    def wrap(handler: F) -> F:
        @functools.wraps(handler)
        async def checked(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            principal = principal_of(request)
            if principal is None or not allows(principal.role, role):
                held = principal.role if principal else "none"
                return view.json(
                    {"error": f"this needs the {role} role; these credentials have {held}"},
                    status=403,
                )
            return await handler(view, request, *args, **kwargs)

        return cast("F", checked)

    return wrap


# --- the sign-in page ----------------------------------------------------------------------
_SIGNIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>journeywatch: sign in</title>
<style>
  body {{ font: 1rem/1.45 system-ui, sans-serif; max-width: 30rem; margin: 4rem auto;
         padding: 0 1rem; }}
  label {{ display: block; margin: 1rem 0 .3rem; }} input[type=password] {{ width: 100%; }}
  input, button {{ font: inherit; padding: .3rem .5rem; }} .error {{ color: #b34700; }}
  .muted {{ color: #525252; font-size: .9rem; }}
</style></head>
<body><main>
<h1>journeywatch</h1>
{message}
<form method="post" action="/signin">
  <input type="hidden" name="csrf" value="{csrf}">
  <input type="hidden" name="next" value="{next}">
  <label for="token">API token</label>
  <input id="token" name="token" type="password" autocomplete="current-password" required
    autofocus>
  <p><button type="submit">Sign in</button></p>
</form>
<p class="muted">The admin or read-only token (JW_WEB_ADMIN_TOKEN, JW_WEB_READ_TOKEN). A local
<code>journeywatch run</code> keeps its generated admin token in
<code>var/web-admin.token</code>.</p>
</main></body></html>
"""


def _signin_page(access: WebAccess, next_path: str, message: str, status: int) -> web.Response:
    nonce = _nonce()
    body = _SIGNIN_PAGE.format(
        message=f'<p class="error" role="alert">{escape(message)}</p>' if message else "",
        csrf=escape(access.signin_csrf(nonce)),
        next=escape(next_path),
    )
    response = web.Response(text=body, content_type="text/html", status=status)
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(
        SIGNIN_COOKIE,
        nonce,
        max_age=SIGNIN_FORM_S,
        path="/signin",
        secure=access.cookie_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


def register_signin(app: Any, access: WebAccess) -> None:
    """``/signin`` (GET the form, POST a token), ``/signout`` (POST), ``GET
    /api/v1/auth/session`` (who is signed in, and the CSRF token for the page's forms), and
    ``POST /api/v1/auth/sessions/revoke`` (admin: end every browser session)."""
    import faust

    class SignIn(faust.web.View):
        async def get(self, request: Any) -> Any:
            return _signin_page(access, safe_next(request.query.get("next")), "", 200)

        async def post(self, request: Any) -> Any:
            form = await request.post()
            next_path = safe_next(str(form.get("next") or "/"))
            if not access.signin_ok(request.cookies.get(SIGNIN_COOKIE), str(form.get("csrf"))):
                return _signin_page(
                    access, next_path, "The form expired: sign in again.", status=403
                )
            role = access.token_role(str(form.get("token") or ""))
            if role is None:
                log.warning("sign-in refused: wrong token", extra={"client": request.remote})
                return _signin_page(access, next_path, "That token is not valid.", status=401)
            response = _see_other(next_path)
            response.set_cookie(
                SESSION_COOKIE,
                access.issue_session(f"{role} token", role),
                max_age=int(access.session_s),
                path="/",
                secure=access.cookie_secure,
                httponly=True,
                samesite="Lax",
            )
            response.del_cookie(SIGNIN_COOKIE, path="/signin")
            return response

    class SignOut(faust.web.View):
        async def post(self, request: Any) -> Any:  # the guard checked the CSRF token
            response = _see_other("/signin")
            response.del_cookie(SESSION_COOKIE, path="/")
            return response

    async def session(view: Any, request: Any) -> Any:
        principal = principal_of(request)
        assert principal is not None  # the guard let it through
        csrf = access.csrf_token(principal) if principal.via in ("session", "proxy") else None
        response = view.json(
            {
                "user": principal.user,
                "role": principal.role,
                "via": principal.via,
                "csrf_token": csrf,
            }
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    class Revoke(faust.web.View):
        @requires("admin")
        async def post(self, request: Any) -> Any:
            access.revoke_sessions()
            principal = principal_of(request)
            log.warning("every browser session revoked", extra={"by": principal and principal.user})
            return self.json({"revoked": True})

    app.page("/signin")(SignIn)
    app.page("/signout")(SignOut)
    app.page("/api/v1/auth/session")(session)
    app.page("/api/v1/auth/sessions/revoke")(Revoke)
