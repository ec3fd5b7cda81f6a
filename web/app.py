"""The ASGI app: the pages, the JSON API, /metrics, static files, and the guard in front."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.settings import Settings
from web import api, api_labels, api_models, pages, pages_models
from web.limits import MAX_BODY_BYTES, BodyLimit
from web.metrics import make_registry, render
from web.rendering import error_page
from web.security import Guard, is_loopback, wants_html
from web.state import WebState

STATIC = Path(__file__).with_name("static")


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
    app.include_router(pages.router)
    app.include_router(pages_models.router)
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

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)  # outermost: before anything reads
    return app


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
