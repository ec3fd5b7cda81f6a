"""The ASGI app: the pages, the JSON API, /metrics, static files, and the guard in front."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from contract.settings import Settings
from web import api, pages
from web.metrics import make_registry, render
from web.security import Guard, is_loopback
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
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    registry = make_registry(web)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return render(registry)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        # One message a person can act on per bad field, not pydantic's internals.
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('body', 'query', 'path'))}: "
            f"{e['msg']}"
            for e in exc.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems), "errors": problems}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if pages.wants_page(request):
            return pages.error_page(request, exc)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    return app
