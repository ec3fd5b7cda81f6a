"""The HTML pages of results, review and failures. Each renders what its JSON twin under /api
returns (the same functions build both), so every page has a machine-readable form; actions
are plain HTML forms that work without JavaScript, and the review page adds a little of our
own for the keyboard. Models and runs are in :mod:`web.pages_models`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from contract.failures import FailureKind
from contract.filters import ResultFilters
from db import browse, runs, versions
from db.browse import Sort
from db.engine import transaction
from db.models import ImageStatus
from web import api, api_edge, api_labels, api_suspects, schemas
from web.rendering import Done, back, error_page, render, submit
from web.security import COOKIE, token_matches

router = APIRouter(include_in_schema=False)
MAX_TWINS_SHOWN = 12
SORT_NAMES = {
    "newest": "newest first",
    "oldest": "oldest first",
    "confidence": "least confident first",
    "-confidence": "most confident first",
}


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    web = api_edge.state(request)
    status = api.status(request)
    with transaction(web.sessions) as session:
        work = browse.work_per_minute(session, 60)
        recent = runs.recent(session, 5)
        scores = versions.latest_scores(versions.score_history(session))
    active = status.active_model
    # The accuracy every promotion line quotes: on the held-out images, not on validation.
    held_out = next((s for s in scores if active and s.version_id == active.id), None)
    return render(
        request,
        "overview.html",
        "/api/status",
        status=status,
        work=work,
        runs=recent,
        held_out=held_out,
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

    def at(page_cursor: str | None) -> str | None:
        return "/browse?" + urlencode({**query, "cursor": page_cursor}) if page_cursor else None

    here = "/browse?" + urlencode({**query, **({"cursor": cursor} if cursor else {})})
    kept = _kept_form(request)
    response = render(
        request,
        "browse.html",
        "/api/results?" + urlencode({**query, **({"cursor": cursor} if cursor else {})}),
        tiles=tiles,
        filters=query,
        labels=api.label_counts(request).items,
        statuses=[s.value for s in ImageStatus],
        sorts=SORT_NAMES,
        next_url=at(page.next_cursor),
        prev_url=at(page.prev_cursor),
        first_url="/browse?" + urlencode(query) if cursor else None,
        total=page.total,
        total_is_lower_bound=page.total_is_lower_bound,
        here=here,
        classes=api_labels.classes(request).items,
        filtered=bool(filters.active()),
        kept=kept,
    )
    response.delete_cookie(KEPT_COOKIE, path="/")
    return response


BulkAction = Literal["confirm", "relabel", "retry"]


@router.post("/browse/bulk")
def bulk_form(
    request: Request,
    action: Annotated[BulkAction, Form()],
    sha256: Annotated[list[str] | None, Form()] = None,
    label: Annotated[str, Form(max_length=1000)] = "",
    new_class: Annotated[bool, Form()] = False,
) -> Response:
    """The Browse page's bulk actions on the ticked images: confirm the model's labels, label
    them all as one class, or classify failed ones again."""
    chosen = sha256 or []

    def act() -> Done:
        if not chosen:
            return "Nothing ticked: tick the images first, then choose what to do", True
        if action == "retry":
            body = schemas.RetryRequest(sha256s=chosen)
            sent = api.retry_failed(request, body)
            skipped = len(set(chosen)) - sent.queued
            note = f" ({skipped} were not failed)" if skipped else ""
            return f"{sent.queued} image(s) sent to be classified again{note}", bool(skipped)
        if action == "relabel" and not label.strip():
            raise HTTPException(422, "say which class to label them with")
        request_body = schemas.BulkLabelRequest(
            sha256s=chosen,
            label=label.strip() if action == "relabel" else None,
            new_class=new_class,
        )
        done = api_labels.add_labels(request, request_body)
        refused_new = [r for r in done.refused if api_labels.NEW_CLASS_HINT in r.detail]
        if refused_new and not done.labeled:
            raise KeepForm(
                refused_new[0].detail.replace(
                    api_labels.NEW_CLASS_HINT, api_labels.PAGE_NEW_CLASS_HINT
                )
            )
        what = f"as “{label.strip()}”" if action == "relabel" else "(the model's label confirmed)"
        text = f"Labeled {done.labeled} image(s) {what}"
        if done.refused:
            reasons = sorted({r.detail for r in done.refused})
            text += f"; {len(done.refused)} not: " + "; ".join(reasons[:3])
        if done.retrain_run is not None:
            text += f"; that queued training run {done.retrain_run}"
        return text, bool(done.refused)

    try:
        return submit(request, act, "/browse")
    except KeepForm as exc:
        # Said as a warning on the page, which keeps what was ticked and typed.
        response = back(request, "/browse", str(exc), warn=True)
        kept = json.dumps({"ticked": chosen[:500], "label": label[:100], "new_class": new_class})
        response.set_cookie(KEPT_COOKIE, quote(kept), max_age=60, path="/", samesite="strict")
        return response


class KeepForm(Exception):
    """A bulk action refused for something the person can fix on the same form."""


KEPT_COOKIE = "bulk_form"


def _kept_form(request: Request) -> dict[str, Any]:
    """What the Browse form held when its action was refused (ticks, class), once."""
    raw = request.cookies.get(KEPT_COOKIE)
    if not raw:
        return {"ticked": [], "label": "", "new_class": False}
    try:
        data = json.loads(unquote(raw))
        return {
            "ticked": [str(s) for s in data.get("ticked", [])][:500],
            "label": str(data.get("label", ""))[:100],
            "new_class": bool(data.get("new_class", False)),
        }
    except (ValueError, AttributeError):
        return {"ticked": [], "label": "", "new_class": False}


@router.get("/images/{sha256}", response_class=HTMLResponse)
def image_page(request: Request, sha256: api_edge.Sha256) -> HTMLResponse:
    detail = api.image(request, sha256)
    try:
        twins = api_suspects.similar(request, sha256).items
    except HTTPException:  # no hash yet (classified before hashes were kept): no twins shown
        twins = []
    return render(
        request,
        "image.html",
        f"/api/images/{sha256}",
        image=detail,
        classes=api_labels.classes(request).items,
        twins=twins[:MAX_TWINS_SHOWN],
    )


@router.post("/images/{sha256}/label")
def label_form(
    request: Request,
    sha256: api_edge.Sha256,
    label: Annotated[str, Form(max_length=1000)],
    new_class: Annotated[bool, Form()] = False,
) -> Response:
    def act() -> Done:
        body = schemas.LabelRequest(sha256=sha256, label=label.strip(), new_class=new_class)
        try:
            done = api_labels.add_label(request, body)
        except HTTPException as exc:
            detail = str(exc.detail).replace(
                api_labels.NEW_CLASS_HINT, api_labels.PAGE_NEW_CLASS_HINT
            )
            raise HTTPException(exc.status_code, detail) from None
        return f"Labeled “{done.label}”: a training example in labeled/{done.label}/"

    return submit(request, act, f"/images/{sha256}")


@router.post("/images/{sha256}/unlabel")
def unlabel_form(request: Request, sha256: api_edge.Sha256) -> Response:
    def act() -> Done:
        api_labels.undo_label(request, sha256)
        return "Label removed: the image is back in the review queue"

    return submit(request, act, f"/images/{sha256}")


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request) -> HTMLResponse:
    first = api_labels.review(request, limit=1)
    return render(
        request,
        "review.html",
        "/api/review",
        first=first.items[0] if first.items else None,
        remaining=first.remaining,
        more=first.remaining_is_lower_bound,
        classes=[c.model_dump() for c in api_labels.classes(request).items],
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
        groups=api.failure_kinds(request).items,
        kind=kind.value if kind else None,
        items=page.items,
        next_url=next_url,
    )


@router.post("/failed/retry")
def retry_form(
    request: Request,
    kind: Annotated[FailureKind | None, Form()] = None,
    sha256: Annotated[api_edge.Sha256 | None, Form()] = None,
) -> Response:
    """The Failed page's retries: one image, every image of a kind, or (neither given) every
    failed image."""

    def act() -> Done:
        if sha256 is not None:
            sent = api.retry_failed(request, schemas.RetryRequest(sha256s=[sha256]))
            if not sent.queued:
                return "That image is not failed any more", True
            return "Sent to be classified again"
        kinds = [kind] if kind is not None else [g.kind for g in api.failure_kinds(request).items]
        queued = sum(
            api.retry_failed(request, schemas.RetryRequest(kind=FailureKind(k))).queued
            for k in kinds
        )
        what = f"“{kind.value}” " if kind is not None else "failed "
        if not queued:
            return f"No {what}image to retry", True
        return f"{queued} {what}image(s) sent to be classified again"

    return submit(request, act, "/failed")


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


__all__ = ["error_page", "router"]
