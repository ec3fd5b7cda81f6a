"""Who may use the web app, and from where.

- Bound to loopback (the default) it serves this machine only; requests must name it in their
  Host header (no DNS rebinding from a web page). Bound to any other address it refuses to
  start unless ``INBOX_CLASSIFIER_WEB_TOKEN`` is set.
- With a token, every request needs it: ``Authorization: Bearer <token>``, or the HttpOnly
  cookie the login page sets. Only the login page and the static files are open.
- A state-changing request (POST, PUT, PATCH, DELETE) from another origin is refused, whatever
  its credentials: a page elsewhere cannot make a logged-in browser label or promote.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

COOKIE = "inbox_classifier_token"
OPEN_PREFIXES = ("/login", "/static/", "/favicon.ico")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class RefusedBind(ValueError):
    """Bound off loopback without a token."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without its port: ``[::1]:8000`` and ``[::1]`` give
    ``[::1]``, ``localhost:8000`` gives ``localhost``."""
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise RefusedBind(
            f"refusing to serve on {host}: off this machine the web app needs a token. Set "
            "INBOX_CLASSIFIER_WEB_TOKEN (e.g. `export INBOX_CLASSIFIER_WEB_TOKEN=$(openssl "
            "rand -hex 24)`), or bind to 127.0.0.1 and use an SSH tunnel or a reverse proxy"
        )


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.cookies.get(COOKIE)


def same_origin(request: Request) -> bool:
    """False for a browser request sent from another origin (another site, or another port
    on this machine). Requests without Origin and Fetch metadata (curl, scripts) pass."""
    origin = request.headers.get("origin")
    if origin is not None:
        if origin == "null":
            return False
        parts = urlsplit(origin)
        own = request.headers.get("host", "")
        return parts.netloc == own and parts.scheme == request.url.scheme
    site = request.headers.get("sec-fetch-site")
    return site in (None, "same-origin", "none")


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", "/metrics")) and "text/html" in (
        request.headers.get("accept", "")
    )


class Guard:
    """ASGI middleware (via ``app.middleware("http")``) enforcing the rules above."""

    def __init__(self, token: str | None, loopback_only: bool) -> None:
        self.token = token
        self.loopback_only = loopback_only

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if self.loopback_only:
            host = host_name(request.headers.get("host", ""))
            if not is_loopback(host):
                return _refuse(400, f"unknown host {host!r}: this app serves localhost only")
        if request.method not in SAFE_METHODS and not same_origin(request):
            return _refuse(403, "cross-origin request refused")
        if (
            self.token
            and not request.url.path.startswith(OPEN_PREFIXES)
            and not token_matches(presented_token(request), self.token)
        ):
            if wants_html(request):
                query = f"?{request.url.query}" if request.url.query else ""
                target = quote(request.url.path + query)
                return RedirectResponse(f"/login?next={target}", status_code=303)
            return _refuse(401, "a token is required", {"WWW-Authenticate": "Bearer"})
        started = time.perf_counter()
        response = await call_next(request)
        # The app's own time, for a person's devtools and for bench/web_bench.py.
        elapsed_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.2f}"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def _refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
