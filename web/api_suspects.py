"""The JSON API of the mistakes a person cannot see: suspect labels in labeled/ (decide, undo,
their pictures), an image's near-twins, and the near-duplicate groups. The work is in
:mod:`pipeline.suspects` and :mod:`pipeline.near_duplicates`, as the CLI's is."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from db import suspects as store
from db.engine import transaction
from imaging.decode import BadImage
from pipeline import near_duplicates
from pipeline import suspects as use_case
from pipeline.errors import UseCaseError
from web import schemas
from web.api_edge import ERRORS, IMMUTABLE, Sha256, binary, http_error, state
from web.thumbs import cached_thumbnail, make_thumbnail

router = APIRouter(prefix="/api", responses=ERRORS)
MAX_SUSPECTS = 500


@router.get("/suspects", response_model=schemas.SuspectsOut, summary="Labels the model doubts")
def suspects(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_SUSPECTS)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> schemas.SuspectsOut:
    """The latest training run's labeled images, most suspect first (the lowest probability
    for their given label from a head that never trained on them), less the ones a person has
    decided on."""
    web = state(request)
    with transaction(web.sessions) as session:
        items = store.suspects(session, limit, offset)
        remaining = store.count_open(session)
        run_id = store.latest_run(session)
    return schemas.SuspectsOut(
        items=[schemas.SuspectOut(**asdict(s)) for s in items],
        remaining=remaining,
        run_id=run_id,
    )


@router.post(
    "/suspects/{sha256}",
    response_model=schemas.SuspectDecidedOut,
    summary="Keep, relabel or remove a suspect label",
)
def decide(
    request: Request, sha256: Sha256, body: schemas.SuspectDecisionIn
) -> schemas.SuspectDecidedOut:
    web = state(request)
    decision = {
        "keep": use_case.Decision.KEEP,
        "relabel": use_case.Decision.RELABEL,
        "remove": use_case.Decision.REMOVE,
    }[body.decision]
    try:
        done = use_case.decide(
            web.settings, web.sessions, sha256, decision, body.new_label, body.reviewer, web.celery
        )
    except UseCaseError as exc:
        raise http_error(exc) from None
    return schemas.SuspectDecidedOut(**asdict(done))


@router.delete(
    "/suspects/{sha256}",
    response_model=schemas.SuspectDecidedOut,
    summary="Undo the decision on a suspect label",
)
def undo(request: Request, sha256: Sha256) -> schemas.SuspectDecidedOut:
    web = state(request)
    try:
        done = use_case.undo(web.settings, web.sessions, sha256, web.celery)
    except UseCaseError as exc:
        raise http_error(exc) from None
    return schemas.SuspectDecidedOut(**asdict(done))


@router.get(
    "/suspects/{sha256}/thumbnail",
    summary="A JPEG thumbnail of a labeled image (cached)",
    response_class=FileResponse,
    responses=binary("image/jpeg", description="the thumbnail"),
)
def suspect_thumbnail(
    request: Request,
    sha256: Sha256,
    size: Annotated[str, Query(pattern="^(small|large)$")] = "large",
) -> Response:
    web = state(request)
    path = cached_thumbnail(web.thumbs, sha256, size)
    if path is None:
        with transaction(web.sessions) as session:
            found = store.suspect(session, sha256)
        if found is None:
            raise HTTPException(404, f"no labeled image with content hash {sha256}")
        try:
            data = use_case.labeled_bytes(web.settings, found, web.settings.file_byte_limit)
            path = make_thumbnail(web.thumbs, sha256, size, data, web.settings.max_image_pixels)
        except UseCaseError as exc:
            raise http_error(exc) from None
        except BadImage as exc:
            raise HTTPException(422, f"no thumbnail: {exc}") from None
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": IMMUTABLE})


@router.get(
    "/images/{sha256}/similar",
    response_model=schemas.SimilarOut,
    summary="The image's near-twins: the same picture under other bytes",
)
def similar(request: Request, sha256: Sha256) -> schemas.SimilarOut:
    """Inbox images and labeled images whose perceptual hashes are within the ledger's
    threshold of this one's, nearest first."""
    web = state(request)
    try:
        found = near_duplicates.twins(web.settings, web.sessions, sha256)
        bits = near_duplicates.threshold(web.settings, web.sessions).bits
    except UseCaseError as exc:
        raise http_error(exc) from None
    return schemas.SimilarOut(
        items=[schemas.TwinOut(**asdict(t)) for t in found], threshold_bits=bits
    )


@router.get(
    "/near-duplicates",
    response_model=schemas.NearDuplicatesOut,
    summary="Groups of near-duplicates among the classified images",
)
def groups(request: Request) -> schemas.NearDuplicatesOut:
    """A grouping pass (it stores the groups Browse filters by): every hashed image, or, over
    50,000, the next share of those no pass compared yet (``pending`` says how many remain)."""
    web = state(request)
    try:
        result = near_duplicates.refresh(web.settings, web.sessions)
    except UseCaseError as exc:
        raise http_error(exc) from None
    return schemas.NearDuplicatesOut(
        groups=result.groups,
        images=result.images,
        threshold_bits=result.threshold_bits,
        threshold=result.threshold,
        seconds=result.seconds,
        pending=result.pending,
    )
