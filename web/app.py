"""The ASGI app: the pages, the JSON API, /metrics, static files, and the guard in front."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.settings import Settings
from db.errors import DATABASE_ERRORS, unavailable_reason
from web import api, api_labels, api_models, api_suspects, pages, pages_mistakes, pages_models
from web.limits import MAX_BODY_BYTES, BodyLimit
from web.metrics import make_registry, render
from web.rendering import error_page
from web.security import Guard, is_loopback, wants_html
from web.state import WebState

STATIC = Path(__file__).with_name("static")
log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("inbox-classifier")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def create_app(settings: Settings, host: str | None = None) -> FastAPI:
    """The web app for ``settings``, to be served on ``host`` (default: settings.web_host)."""
    web = WebState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        web.close()

    app = FastAPI(
        title="inbox-classifier",
        version=_version(),
        summary="Results, review, labels and models of an inbox-classifier ledger.",
        docs_url=None,  # Swagger UI loads from a CDN; /docs renders the schema itself
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.web = web
    token = settings.web_token.get_secret_value() if settings.web_token else None
    app.middleware("http")(Guard(token, loopback_only=is_loopback(host or settings.web_host)))
    app.include_router(api.router)
    app.include_router(api_labels.router)
    app.include_router(api_models.router)
    app.include_router(api_suspects.router)
    app.include_router(pages.router)
    app.include_router(pages_models.router)
    app.include_router(pages_mistakes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    registry = make_registry(web)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return render(registry)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        # Browsers ask for it whatever the page links; the pages link the same icon.
        return FileResponse(
            STATIC / "favicon.svg",
            media_type="image/svg+xml",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    _answer_errors(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)  # outermost: before anything reads
    return app


def _answer_errors(app: FastAPI) -> None:
    """Every error as a message a person can act on: a page for a browser, JSON otherwise; a
    database that refuses is a 503 with Retry-After, not a 500."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        # One message a person can act on per bad field, not pydantic's internals.
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('body', 'query', 'path'))}: "
            f"{e['msg']}"
            for e in exc.errors()
        ]
        if wants_html(request):
            return error_page(request, HTTPException(422, "; ".join(problems)))
        return JSONResponse({"detail": "; ".join(problems), "errors": problems}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route of the path that matched; a path served by
            # several (GET and POST /api/labels) allows all their methods.
            documented = allowed_methods(app, request.url.path)
            if documented:
                headers["Allow"] = ", ".join(documented)
        if wants_html(request):
            return error_page(request, HTTPException(exc.status_code, exc.detail, headers))
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)

    outage = Outage()

    async def database_error(request: Request, exc: Exception) -> Response:
        reason = unavailable_reason(exc)
        if reason is None:
            raise exc  # a bug, not the database: a 500 with its traceback in the log
        outage.refused(reason)
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if wants_html(request):
            return error_page(request, HTTPException(503, reason, headers))
        return JSONResponse({"detail": reason}, 503, headers=headers)

    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, database_error)

    @app.middleware("http")
    async def recovered(request: Request, call_next: Callable[[Request], Awaitable[Response]]):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        if response.status_code < 500:
            outage.answered()
        return response


#: What a 503 from a refusing database asks a client to wait.
RETRY_AFTER_S = 5


class Outage:
    """Says on the log (so on `up`'s terminal) when the database starts refusing, at most
    once a minute while it lasts, and when it answers again. Each request opens a fresh
    connection where the last one saw the file read-only or failing (db.engine), so the app
    recovers on its own; meanwhile every request the database refuses gets a 503 with the
    reason."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._since: float | None = None
        self._said = -float("inf")

    def refused(self, reason: str) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._said >= self.every_s:
            self._said = now
            log.error("answering 503: %s", reason)

    def answered(self) -> None:
        if self._since is not None:
            refused_for = time.monotonic() - self._since
            log.warning("the database answers again after %.0f s of refusals", refused_for)
            self._since = None
            self._said = -float("inf")


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API documents at ``path`` (its OpenAPI paths, which is what a client
    reads); empty for a path it does not document."""
    paths = app.openapi()["paths"]
    if path in paths:  # a literal path wins over a template that also matches it
        paths = {path: paths[path]}
    methods: set[str] = set()
    for template, operations in paths.items():
        integers = frozenset(
            parameter["name"]
            for operation in operations.values()
            for parameter in operation.get("parameters", [])
            if parameter["in"] == "path" and parameter.get("schema", {}).get("type") == "integer"
        )
        if _template(template, integers).fullmatch(path):
            methods.update(m.upper() for m in operations)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


@functools.cache
def _template(template: str, integers: frozenset[str]) -> re.Pattern[str]:
    """A path template as a pattern: an integer parameter matches digits, any other a segment."""
    pattern = re.escape(template)
    for name in re.findall(r"\{([^}]+)\}", template):
        segment = "[0-9]+" if name in integers else "[^/]+"
        pattern = pattern.replace(re.escape("{" + name + "}"), segment)
    return re.compile(pattern)
