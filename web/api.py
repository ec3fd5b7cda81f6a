"""The JSON API under /api (the pages use it too) of results, review, labels, images and
failures; models and runs are in :mod:`web.api_models`. Every image is addressed by its content
hash; no parameter anywhere is a path."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from broker.app import NoBroker
from contract.clock import iso
from contract.failures import FailureKind
from contract.files import FileGone, FileRefused
from contract.filters import ResultFilters
from db import browse, labels, ledger
from db.browse import BadCursor, Sort
from db.engine import transaction
from db.queries import ledger_status
from imaging.decode import BadImage
from imaging.formats import sniff
from objectstore.inbox import read_image
from pipeline.enqueue import PartlySent, enqueue
from web import schemas
from web.api_edge import (
    ERRORS,
    IMAGE_TYPES,
    IMMUTABLE,
    Cursor,
    Sha256,
    binary,
    item,
    state,
)
from web.state import REVIEW_COUNT_CAP, WebState
from web.thumbs import cached_thumbnail, make_thumbnail

router = APIRouter(prefix="/api", responses=ERRORS)
ThumbSize = Literal["small", "large"]


# --- status and results ---------------------------------------------------------------------


@router.get("/status", response_model=schemas.StatusOut, summary="The `status --json` object")
def status(
    request: Request, window: Annotated[int, Query(ge=1, le=86_400)] = 60
) -> schemas.StatusOut:
    web = state(request)
    with transaction(web.sessions) as session:
        ledger_part = ledger_status(session, window)
    queues = web.queues.get()
    backlog = web.review_backlog.get()
    return schemas.StatusOut.model_validate(
        {
            **ledger_part.to_dict(),
            "queue_depth": queues.depth,
            "workers": queues.workers,
            "review_backlog": backlog,  # counted up to 10,000
            "review_backlog_is_lower_bound": backlog >= REVIEW_COUNT_CAP,
        }
    )


@router.get("/results", response_model=schemas.ResultsPage, summary="Results, a page at a time")
def results(
    request: Request,
    filters: Annotated[ResultFilters, Query()],
    sort: Sort = Sort.NEWEST,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 100,
) -> schemas.ResultsPage:
    """One row per (image, path). ``cursor`` is a page's ``next_cursor`` or ``prev_cursor``;
    ``total`` counts the matching rows up to 10,000. Filtering by near-duplicates goes by the
    groups of the last grouping pass, and starts one in the background where images were
    classified since."""
    web = state(request)
    if filters.near_duplicates is not None or filters.dup_group is not None:
        web.regroup_soon()
    try:
        with transaction(web.sessions) as session:
            page = browse.result_page(session, filters, sort, cursor, limit)
            total = browse.count_results(session, filters)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    return schemas.ResultsPage(
        items=[item(r) for r in page.items],
        next_cursor=page.next_cursor,
        prev_cursor=page.prev_cursor,
        total=total,
        total_is_lower_bound=total >= browse.COUNT_CAP,
    )


@router.get("/labels", response_model=schemas.LabelCountsOut, summary="Images per label")
def label_counts(request: Request) -> schemas.LabelCountsOut:
    """The label shown (a person's, else the model's) and how many images have it."""
    web = state(request)
    return schemas.LabelCountsOut(
        items=[schemas.LabelCount(label=n, images=c) for n, c in web.label_counts.get()]
    )


# --- images -----------------------------------------------------------------------------------


def image_out(web: WebState, sha256: str) -> schemas.ImageOut:
    with transaction(web.sessions) as session:
        detail = browse.image_detail(session, sha256)
    if detail is None:
        raise HTTPException(404, f"no image with content hash {sha256}")
    acts = [
        {**asdict(a), "created_at": iso(a.created_at), "undone_at": iso(a.undone_at)}
        for a in detail.labels
    ]
    return schemas.ImageOut.model_validate(
        {
            **detail.item.to_dict(),
            "size": detail.size,
            "margin": detail.margin,
            "paths": [asdict(p) for p in detail.paths],
            "predictions": [asdict(p) for p in detail.predictions],
            "labels": acts,
        }
    )


@router.get("/images/{sha256}", response_model=schemas.ImageOut, summary="One image")
def image(request: Request, sha256: Sha256) -> schemas.ImageOut:
    _check_sha(sha256)
    return image_out(state(request), sha256)


def _check_sha(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise HTTPException(422, "an image is addressed by its sha256: 64 hex digits")


def _inbox_bytes(web: WebState, sha256: str) -> bytes:
    with transaction(web.sessions) as session:
        target = labels.target(session, sha256)
    if target is None:
        raise HTTPException(404, f"no image with content hash {sha256}")
    try:
        return read_image(web.settings, target.paths, sha256).data
    except FileGone as exc:
        raise HTTPException(410, str(exc)) from None
    except FileRefused as exc:
        raise HTTPException(422, str(exc)) from None


@router.get(
    "/images/{sha256}/thumbnail",
    summary="A JPEG thumbnail (cached)",
    response_class=FileResponse,
    responses=binary("image/jpeg", description="the thumbnail"),
)
def thumbnail(
    request: Request,
    sha256: Sha256,
    size: Annotated[ThumbSize, Query(description="small: 320 px, large: 1024 px")] = "small",
) -> Response:
    _check_sha(sha256)
    web = state(request)
    path = cached_thumbnail(web.thumbs, sha256, size)
    if path is None:
        data = _inbox_bytes(web, sha256)
        try:
            path = make_thumbnail(web.thumbs, sha256, size, data, web.settings.max_image_pixels)
        except BadImage as exc:
            raise HTTPException(422, f"no thumbnail: {exc}") from None
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": IMMUTABLE})


@router.get(
    "/images/{sha256}/original",
    summary="The file's bytes, as dropped",
    response_class=Response,
    responses=binary(*IMAGE_TYPES, description="the file, with its sniffed image type"),
)
def original(request: Request, sha256: Sha256) -> Response:
    _check_sha(sha256)
    data = _inbox_bytes(state(request), sha256)
    kind = sniff(data)
    if kind is None:
        raise HTTPException(422, "not an image format this app serves")
    return Response(
        data,
        media_type=kind.media_type,
        headers={
            "Cache-Control": IMMUTABLE,
            # Bytes from the inbox are untrusted: never run as a page, never sniffed as one.
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition": f'inline; filename="{sha256[:16]}{kind.extension}"',
        },
    )


# --- failures ---------------------------------------------------------------------------------


@router.get("/failed/kinds", response_model=schemas.FailureGroupsOut, summary="By kind")
def failure_kinds(request: Request) -> schemas.FailureGroupsOut:
    with transaction(state(request).sessions) as session:
        groups = browse.failure_counts(session)
    return schemas.FailureGroupsOut(
        items=[schemas.FailureGroup(kind=k, images=n) for k, n in groups]
    )


@router.get("/failed", response_model=schemas.ResultPage, summary="Failed images")
def failed(
    request: Request,
    kind: FailureKind | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 100,
) -> schemas.ResultPage:
    try:
        with transaction(state(request).sessions) as session:
            page = browse.failed_page(session, kind.value if kind else None, cursor, limit)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    return schemas.ResultPage(items=[item(r) for r in page.items], next_cursor=page.next_cursor)


@router.post("/failed/retry", response_model=schemas.RetryOut, summary="Classify them again")
def retry_failed(request: Request, body: schemas.RetryRequest) -> schemas.RetryOut:
    """For files a person fixed: the images go back to queued and are sent to the workers."""
    if body.kind is None and not body.sha256s:
        raise HTTPException(422, "say which: a kind, or sha256s")
    for sha in body.sha256s:
        _check_sha(sha)
    web = state(request)
    with transaction(web.sessions) as session:
        items = ledger.requeue_failed(session, kind=body.kind, sha256s=body.sha256s)
    if not items:
        return schemas.RetryOut(queued=0, messages=0)
    try:
        sent = enqueue(web.celery(), web.sessions, items, web.settings.files_per_message)
    except (NoBroker, PartlySent) as exc:  # the rows are queued: the reconciler sends them
        raise HTTPException(
            503, f"{len(items)} image(s) queued, but the broker is unreachable ({exc})"
        ) from None
    return schemas.RetryOut(queued=len(items), messages=sent.messages)
