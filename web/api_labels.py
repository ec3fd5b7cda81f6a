"""The JSON API of review and labels: the review queue, the known classes, labeling one image
or many, and undoing a label. Labels go through :mod:`pipeline.labels`, as the CLI's do."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from db import browse, labels
from db.browse import BadCursor
from db.engine import transaction
from pipeline.classes import known_classes
from pipeline.labels import LabelError, apply_label, remove_label
from web import schemas
from web.api import image_out
from web.api_edge import ERRORS, STATUS_OF, Cursor, Sha256, http_error, item, state
from web.state import REVIEW_COUNT_CAP, WebState

router = APIRouter(prefix="/api", responses=ERRORS)
REVIEW_KEYS = 10  # classes on the keyboard: Shift+1 ... Shift+9, then Shift+0


@router.get("/review", response_model=schemas.ReviewPage, summary="The next images to review")
def review(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 20,
    cursor: Cursor = None,
) -> schemas.ReviewPage:
    """Those whose set of likely classes is not one class first, then the rest; each group by
    the smallest margin between the model's two best classes. Of near-duplicates (the same
    picture under other bytes), one at a time."""
    web = state(request)
    if not cursor:  # a new walk of the queue: group the copies classified since the last one
        web.regroup_soon()
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


@router.get(
    "/classes",
    response_model=schemas.ClassesOut,
    summary="The classes a label can name, in a stable order (people's first)",
)
def classes(request: Request) -> schemas.ClassesOut:
    """Every class folder of labeled/, every class of the active model's head and every label
    people gave, in an order that does not change between visits: the classes people labeled,
    by first use, then the rest by name; the first ten get the review page's keys (1-9, then
    0). A label outside them needs ``new_class: true``."""
    web = state(request)
    found = known_classes(web.settings, web.sessions)
    return schemas.ClassesOut(
        items=[
            schemas.ClassOut(
                name=c.name,
                labeled_images=c.labeled_images,
                in_model=c.in_model,
                key=(i + 1) % 10 if i < REVIEW_KEYS else None,
            )
            for i, c in enumerate(found)
        ]
    )


#: How the API says a label would start a new class; the pages point at their checkbox instead.
NEW_CLASS_HINT = "send new_class: true to start it"
PAGE_NEW_CLASS_HINT = "tick “a new class” beside the class box to start it"


def _label(
    web: WebState, sha256: str, label: str, reviewer: str | None, new_class: bool
) -> int | None:
    """Label one image; the run it queued, if any. Raises HTTPException with the reason."""
    try:
        done = apply_label(
            web.settings, web.sessions, sha256, label, reviewer, web.celery, new_class=new_class
        )
    except LabelError as exc:
        hint = f"; {NEW_CLASS_HINT}" if exc.new_class else ""
        raise HTTPException(STATUS_OF[exc.problem], f"{exc}{hint}") from None
    return done.retrain_run


def _spent(web: WebState) -> None:
    web.label_counts.clear()
    web.review_backlog.clear()


@router.post(
    "/labels", status_code=201, response_model=schemas.LabeledOut, summary="Label an image"
)
def add_label(request: Request, body: schemas.LabelRequest) -> schemas.LabeledOut:
    """The label becomes the image's truth and a training example in labeled/<label>/. Only
    for images that decoded (a failed one answers 422 and stays out of labeled/). The label
    that completes RETRAIN_AFTER_LABELS starts a training run: ``retrain_run``."""
    web = state(request)
    run = _label(web, body.sha256, body.label, body.reviewer, body.new_class)
    _spent(web)
    image = image_out(web, body.sha256)
    return schemas.LabeledOut(**image.model_dump(), retrain_run=run)


@router.post(
    "/bulk/labels", response_model=schemas.BulkLabelOut, summary="Label (or confirm) many images"
)
def add_labels(request: Request, body: schemas.BulkLabelRequest) -> schemas.BulkLabelOut:
    """Each image gets ``label``, or with no label its model's own (a confirm). Each is labeled
    on its own: one that cannot be (failed, gone) is listed with the reason, the rest stand."""
    web = state(request)
    labeled, refused, run = 0, [], None
    try:
        for sha in dict.fromkeys(body.sha256s):
            label = body.label or _model_label(web, sha)
            try:
                if label is None:
                    raise HTTPException(422, "the model has no label for it to confirm")
                run = _label(web, sha, label, body.reviewer, body.new_class) or run
                labeled += 1
            except HTTPException as exc:
                refused.append(schemas.Refused(sha256=sha, detail=str(exc.detail)))
    finally:
        _spent(web)
    return schemas.BulkLabelOut(labeled=labeled, refused=refused, retrain_run=run)


def _model_label(web: WebState, sha256: str) -> str | None:
    with transaction(web.sessions) as session:
        found = labels.target(session, sha256)
    return found.model_label if found is not None else None


@router.delete("/labels/{sha256}", response_model=schemas.ImageOut, summary="Undo an image's label")
def undo_label(request: Request, sha256: Sha256) -> schemas.ImageOut:
    """The image goes back to the review queue; its training copy is removed, and its class
    folder with it once empty."""
    web = state(request)
    try:
        remove_label(web.settings, web.sessions, sha256)
    except LabelError as exc:
        raise http_error(exc) from None
    _spent(web)
    return image_out(web, sha256)
