"""The JSON API under /api (the pages use it too). Every image is addressed by its content
hash; no parameter anywhere is a path."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response

from broker.app import NoBroker
from contract.clock import iso
from contract.failures import FailureKind
from contract.files import FileGone, FileRefused, read_from_inbox
from contract.filters import ResultFilters
from contract.serving import describe_serving
from db import browse, labels, ledger, quality, runs, versions
from db.browse import MAX_CURSOR, MAX_ID, BadCursor, Sort
from db.engine import transaction
from db.queries import ResultRow, ledger_status
from imaging.decode import BadImage
from imaging.formats import sniff
from pipeline.enqueue import PartlySent, enqueue
from pipeline.labels import LabelError, apply_label, remove_label
from pipeline.retrain import NotSent, request_retrain
from web import schemas
from web.state import REVIEW_COUNT_CAP, WebState
from web.thumbs import cached_thumbnail, make_thumbnail

#: What any endpoint may answer besides its success (docs/web.md, "The API").
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorOut, "description": text}
    for code, text in {
        400: "a malformed cursor or request body",
        401: "no token (when the app has one)",
        403: "a cross-origin request",
        404: "no such image, label, version or run",
        409: "the image's file cannot be used (gone, or not an image)",
        410: "the image's file is gone",
        413: "the request body is too large",
        422: "a bad parameter: one line per field in `errors`",
        503: "Redis is unreachable",
    }.items()
}
router = APIRouter(prefix="/api", responses=ERRORS)
ThumbSize = Literal["small", "large"]
Sha256 = Annotated[
    str,
    Path(pattern=schemas.SHA256_PATTERN, description="the image's content hash (64 hex digits)"),
]
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="a row id")]
Cursor = Annotated[
    str | None,
    Query(max_length=MAX_CURSOR, description="next_cursor of the previous page"),
]
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/tiff", "image/bmp")


def binary(*media_types: str, description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of a 200 that is bytes of ``media_types``, not JSON."""
    content = {t: {"schema": {"type": "string", "format": "binary"}} for t in media_types}
    return {200: {"content": content, "description": description}}
IMMUTABLE = "public, max-age=31536000, immutable"  # content-addressed: never changes


def state(request: Request) -> WebState:
    value: WebState = request.app.state.web
    return value


def item(row: ResultRow) -> schemas.ResultItem:
    return schemas.ResultItem.model_validate(row.to_dict())


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


@router.get("/results", response_model=schemas.ResultPage, summary="Results, a page at a time")
def results(
    request: Request,
    filters: Annotated[ResultFilters, Query()],
    sort: Sort = Sort.NEWEST,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 100,
) -> schemas.ResultPage:
    try:
        with transaction(state(request).sessions) as session:
            page = browse.result_page(session, filters, sort, cursor, limit)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    return schemas.ResultPage(items=[item(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/labels", response_model=list[schemas.LabelCount], summary="Images per label")
def label_counts(request: Request) -> list[schemas.LabelCount]:
    web = state(request)
    return [schemas.LabelCount(label=n, images=c) for n, c in web.label_counts.get()]


# --- review and labels ------------------------------------------------------------------------


@router.get("/review", response_model=schemas.ReviewPage, summary="The next images to review")
def review(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 20,
    cursor: Cursor = None,
) -> schemas.ReviewPage:
    """Least certain first: the smallest margin between the model's two best classes."""
    web = state(request)
    try:
        with transaction(web.sessions) as session:
            page = browse.review_page(session, cursor, limit)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    remaining = web.review_backlog.get()
    return schemas.ReviewPage(
        items=[item(r) for r in page.items],
        next_cursor=page.next_cursor,
        remaining=remaining,
        remaining_is_lower_bound=remaining >= REVIEW_COUNT_CAP,
    )


@router.get("/classes", summary="Classes people have labeled with, first used first")
def classes(request: Request) -> list[str]:
    with transaction(state(request).sessions) as session:
        return labels.human_classes(session)


@router.post("/labels", status_code=201, response_model=schemas.ImageOut, summary="Label an image")
def add_label(request: Request, body: schemas.LabelRequest) -> schemas.ImageOut:
    """The label becomes the image's truth and a training example in labeled/<label>/."""
    web = state(request)
    try:
        apply_label(
            web.settings, web.sessions, body.sha256, body.label, body.reviewer, web.celery
        )
    except LabelError as exc:
        raise HTTPException(int(exc.problem), str(exc)) from None
    web.label_counts.clear()
    web.review_backlog.clear()
    return _image(web, body.sha256)


@router.delete("/labels/{sha256}", response_model=schemas.ImageOut, summary="Undo an image's label")
def undo_label(request: Request, sha256: Sha256) -> schemas.ImageOut:
    _check_sha(sha256)
    web = state(request)
    try:
        remove_label(web.settings, web.sessions, sha256)
    except LabelError as exc:
        raise HTTPException(int(exc.problem), str(exc)) from None
    web.label_counts.clear()
    web.review_backlog.clear()
    return _image(web, sha256)


# --- images -----------------------------------------------------------------------------------


def _image(web: WebState, sha256: str) -> schemas.ImageOut:
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
    return _image(state(request), sha256)


def _check_sha(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise HTTPException(422, "an image is addressed by its sha256: 64 hex digits")


def _inbox_bytes(web: WebState, sha256: str) -> bytes:
    with transaction(web.sessions) as session:
        target = labels.target(session, sha256)
    if target is None:
        raise HTTPException(404, f"no image with content hash {sha256}")
    try:
        return read_from_inbox(
            str(web.settings.inbox), target.paths, sha256, web.settings.file_byte_limit
        ).data
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


@router.get("/failed/kinds", response_model=list[schemas.FailureGroup], summary="By kind")
def failure_kinds(request: Request) -> list[schemas.FailureGroup]:
    with transaction(state(request).sessions) as session:
        groups = browse.failure_counts(session)
    return [schemas.FailureGroup(kind=k, images=n) for k, n in groups]


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


# --- models and training ----------------------------------------------------------------------


def _model(view: versions.VersionView, models_dir: FilePath) -> dict[str, Any]:
    return {
        **asdict(view),
        "serving_text": describe_serving(view.serving),
        "has_curves": (models_dir / str(view.id) / "curves.png").is_file(),
    }


@router.get("/models", response_model=list[schemas.ModelOut], summary="Model versions")
def models(request: Request) -> list[schemas.ModelOut]:
    web = state(request)
    with transaction(web.sessions) as session:
        views = versions.views(session)
    return [schemas.ModelOut.model_validate(_model(v, web.settings.models_path)) for v in views]


@router.get(
    "/models/{version_id:int}", response_model=schemas.ModelDetailOut, summary="One version"
)
def model(request: Request, version_id: RowId) -> schemas.ModelDetailOut:
    web = state(request)
    with transaction(web.sessions) as session:
        view = next((v for v in versions.views(session) if v.id == version_id), None)
        report = versions.report(session, version_id)
    if view is None:
        raise HTTPException(404, f"no model version {version_id}")
    data = {**_model(view, web.settings.models_path), "report": report}
    return schemas.ModelDetailOut.model_validate(data)


@router.get(
    "/models/{version_id:int}/quality",
    response_model=schemas.QualityOut,
    summary="Production against validation: drift, needs-review share, corrections",
)
def model_quality(request: Request, version_id: RowId) -> schemas.QualityOut:
    web = state(request)
    with transaction(web.sessions) as session:
        found = quality.version_quality(session, version_id)
    if found is None:
        raise HTTPException(404, f"no model version {version_id}")
    return schemas.QualityOut.model_validate(
        {
            **asdict(found),
            "corrections": {
                k: {"labeled": c.labeled, "corrected": c.corrected, "rate": round(c.rate, 6)}
                for k, c in found.corrections.items()
            },
            "drift_warn": web.settings.drift_warn,
            "drifted": found.drifted(web.settings.drift_warn),
        }
    )


@router.get(
    "/models/{version_id:int}/{picture}.png",
    summary="curves, val_grid or reliability",
    response_class=FileResponse,
    responses=binary("image/png", description="the picture"),
)
def model_picture(
    request: Request,
    version_id: RowId,
    picture: Annotated[Literal["curves", "val_grid", "reliability"], Path()],
) -> Response:
    path = state(request).settings.models_path / str(version_id) / f"{picture}.png"
    if not path.is_file():
        raise HTTPException(404, f"model version {version_id} has no {picture}.png")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": IMMUTABLE})


def _switch(web: WebState, version_id: int | None, verb: str) -> schemas.SwitchOut:
    with transaction(web.sessions) as session:
        try:
            target = versions.switch_target(session, version_id)
        except versions.NoSuchVersion as exc:
            raise HTTPException(404, str(exc)) from None
        if target.already_active:
            return schemas.SwitchOut(active=target.name, previous=target.name)
        if target.trained and not FilePath(target.weights).is_file():
            raise HTTPException(409, f"{target.name} cannot be loaded: {target.weights} is missing")
        previous = versions.activate_by_hand(session, target.id, verb)
    return schemas.SwitchOut(active=target.name, previous=previous)


@router.post(
    "/models/{version_id:int}/promote", response_model=schemas.SwitchOut, summary="Promote"
)
def promote(request: Request, version_id: RowId) -> schemas.SwitchOut:
    """Make this version active (even one the gate rejected); workers switch within seconds."""
    return _switch(state(request), version_id, "promoted")


@router.post("/models/rollback", response_model=schemas.SwitchOut, summary="Roll back")
def rollback(request: Request) -> schemas.SwitchOut:
    return _switch(state(request), None, "rolled back")


@router.post(
    "/retrain",
    status_code=202,
    response_model=schemas.RunOut,
    summary="Retrain now",
    responses={200: {"model": schemas.RunOut, "description": "a run was queued already: it"}},
)
def retrain(
    request: Request, response: Response, body: schemas.RetrainRequestIn | None = None
) -> schemas.RunOut:
    """202 and the new run; 200 and the run already queued or running, when there is one
    (one manual run at a time: clicking twice queues nothing more)."""
    body = body or schemas.RetrainRequestIn()
    web = state(request)
    try:
        asked = request_retrain(web.sessions, web.celery(), force=body.force, fresh=body.fresh)
    except (NoBroker, NotSent) as exc:
        raise HTTPException(503, str(exc)) from None
    if not asked.new:
        response.status_code = 200
    return _run(web, asked.run_id)


def _run(web: WebState, run_id: int) -> schemas.RunOut:
    with transaction(web.sessions) as session:
        run = runs.get(session, run_id)
    if run is None:
        raise HTTPException(404, f"no training run {run_id}")
    return run


@router.get("/runs", response_model=list[schemas.RunOut], summary="Recent training runs")
def recent_runs(
    request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[schemas.RunOut]:
    with transaction(state(request).sessions) as session:
        views = runs.recent(session, limit)
    return views


@router.get("/runs/{run_id:int}", response_model=schemas.RunOut, summary="One training run")
def run(request: Request, run_id: RowId) -> schemas.RunOut:
    return _run(state(request), run_id)


@router.post("/runs/{run_id:int}/cancel", response_model=schemas.RunOut, summary="Stop a run")
def cancel_run(request: Request, run_id: RowId) -> schemas.RunOut:
    """As `retrain --cancel RUN`: a queued run is cancelled at once, a running one stops at its
    next epoch (``cancel_requested`` until then); nothing from it is promoted."""
    web = state(request)
    with transaction(web.sessions) as session:
        if runs.request_cancel(session, run_id) is None:
            raise HTTPException(404, f"no training run {run_id}")
    return _run(web, run_id)
