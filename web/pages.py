"""The HTML pages. Each renders what its JSON twin under /api returns (the same functions
build both), so every page has a machine-readable form; actions are plain HTML forms that
work without JavaScript, and the review page adds a little of our own for the keyboard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from contract.failures import FailureKind
from contract.filters import ResultFilters
from db import browse, runs
from db.browse import MAX_ID, Sort
from db.engine import transaction
from db.models import ImageStatus, ModelStatus
from web import api, api_edge, api_models, schemas
from web.security import COOKIE, token_matches, wants_html

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, twin: str | None, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, name, {"twin": twin, "nav": name.removesuffix(".html"), **context}
    )


def back(request: Request, default: str) -> RedirectResponse:
    """After a form's action: where the form said (a path on this site only), or ``default``."""
    target = request.query_params.get("next") or default
    if not target.startswith("/") or target.startswith("//"):
        target = default
    return RedirectResponse(target, status_code=303)


def submit(request: Request, action: Callable[[], object], default: str) -> Response:
    """A form's POST: the API call ``action``, then :func:`back`; its error as a page."""
    try:
        action()
    except HTTPException as exc:
        return error_page(request, exc)
    except ValidationError as exc:  # a form field the API's request model refuses
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        return error_page(request, HTTPException(422, problems))
    return back(request, default)


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    web = api_edge.state(request)
    status = api.status(request)
    with transaction(web.sessions) as session:
        per_minute = browse.classified_per_minute(session, 60)
        recent = runs.recent(session, 5)
    return render(
        request,
        "overview.html",
        "/api/status",
        status=status,
        per_minute=per_minute,
        runs=recent,
    )


@router.get("/browse", response_class=HTMLResponse)
def browse_page(
    request: Request,
    filters: Annotated[ResultFilters, Query()],
    sort: Sort = Sort.NEWEST,
    cursor: api_edge.Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> HTMLResponse:
    page = api.results(request, filters, sort=sort, cursor=cursor, limit=limit)
    # Rows are (image, path): an image seen at two paths shows once, with both.
    tiles: list[dict[str, Any]] = []
    for row in page.items:
        if tiles and tiles[-1]["item"].sha256 == row.sha256:
            tiles[-1]["paths"].append(row.path)
        else:
            tiles.append({"item": row, "paths": [row.path]})
    query = {**filters.active(), "sort": sort.value, "limit": limit}
    next_url = None
    if page.next_cursor:
        next_url = "/browse?" + urlencode({**query, "cursor": page.next_cursor})
    return render(
        request,
        "browse.html",
        "/api/results?" + urlencode({**query, **({"cursor": cursor} if cursor else {})}),
        tiles=tiles,
        filters=query,
        labels=api.label_counts(request),
        statuses=[s.value for s in ImageStatus],
        sorts=[s.value for s in Sort],
        next_url=next_url,
        first_page=not cursor,
    )


@router.get("/images/{sha256}", response_class=HTMLResponse)
def image_page(request: Request, sha256: api_edge.Sha256) -> HTMLResponse:
    detail = api.image(request, sha256)
    return render(
        request,
        "image.html",
        f"/api/images/{sha256}",
        image=detail,
        classes=api.classes(request),
    )


@router.post("/images/{sha256}/label")
def label_form(
    request: Request, sha256: api_edge.Sha256, label: Annotated[str, Form(max_length=1000)]
) -> Response:
    return submit(
        request,
        lambda: api.add_label(request, schemas.LabelRequest(sha256=sha256, label=label.strip())),
        f"/images/{sha256}",
    )


@router.post("/images/{sha256}/unlabel")
def unlabel_form(request: Request, sha256: api_edge.Sha256) -> Response:
    return submit(request, lambda: api.undo_label(request, sha256), f"/images/{sha256}")


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request) -> HTMLResponse:
    first = api.review(request, limit=1)
    return render(
        request,
        "review.html",
        "/api/review",
        first=first.items[0] if first.items else None,
        remaining=first.remaining,
        more=first.remaining_is_lower_bound,
        classes=api.classes(request),
    )


@router.get("/failed", response_class=HTMLResponse)
def failed_page(
    request: Request, kind: FailureKind | None = None, cursor: api_edge.Cursor = None
) -> HTMLResponse:
    page = api.failed(request, kind=kind, cursor=cursor, limit=100)
    query = {"kind": kind.value} if kind else {}
    next_url = None
    if page.next_cursor:
        next_url = "/failed?" + urlencode({**query, "cursor": page.next_cursor})
    return render(
        request,
        "failed.html",
        "/api/failed" + (f"?kind={kind.value}" if kind else ""),
        groups=api.failure_kinds(request),
        kind=kind.value if kind else None,
        items=page.items,
        next_url=next_url,
    )


@router.post("/failed/retry")
def retry_form(request: Request, kind: Annotated[FailureKind, Form()]) -> Response:
    return submit(
        request, lambda: api.retry_failed(request, schemas.RetryRequest(kind=kind)), "/failed"
    )


@router.get("/models", response_class=HTMLResponse)
def models_page(
    request: Request, version: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> HTMLResponse:
    versions_list = api_models.models(request)
    chosen = (
        version
        if version is not None
        else next((v.id for v in versions_list if v.status == ModelStatus.ACTIVE), None)
    )
    detail = api_models.model(request, chosen) if chosen is not None else None
    quality = api_models.model_quality(request, chosen) if chosen is not None else None
    return render(
        request,
        "models.html",
        "/api/models",
        versions=versions_list,
        detail=detail,
        quality=quality,
        runs=api_models.recent_runs(request, limit=10),
    )


@router.post("/models/{version_id:int}/promote")
def promote_form(request: Request, version_id: api_edge.RowId) -> Response:
    return submit(request, lambda: api_models.promote(request, version_id), "/models")


@router.post("/models/rollback")
def rollback_form(request: Request) -> Response:
    return submit(request, lambda: api_models.rollback(request), "/models")


@router.post("/retrain")
def retrain_form(request: Request) -> Response:
    return submit(
        request,
        lambda: api_models.retrain(request, Response(), schemas.RetrainRequestIn()),
        "/models",
    )


@router.post("/runs/{run_id:int}/cancel")
def cancel_run_form(request: Request, run_id: api_edge.RowId) -> Response:
    return submit(request, lambda: api_models.cancel_run(request, run_id), "/models")


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    """The API reference, from the OpenAPI schema (Swagger UI would need a CDN)."""
    schema = request.app.openapi()
    return render(request, "docs.html", "/openapi.json", schema=schema)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", None, next=next, failed=False)


@router.post("/login")
def login(
    request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
) -> Response:
    expected = api_edge.state(request).settings.web_token
    if expected is None or not token_matches(token, expected.get_secret_value()):
        response = render(request, "login.html", None, next=next, failed=True)
        response.status_code = 401
        return response
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    redirect = RedirectResponse(target, status_code=303)
    redirect.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=30 * 24 * 3600,
    )
    return redirect


def wants_page(request: Request) -> bool:
    return wants_html(request)


def error_page(request: Request, exc: HTTPException) -> HTMLResponse:
    response = render(request, "error.html", None, status=exc.status_code, detail=exc.detail)
    response.status_code = exc.status_code
    return response
