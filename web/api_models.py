"""The JSON API of model versions and training runs: list and inspect versions (report,
quality, pictures), promote or roll back, ask for a retrain, follow and cancel runs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response

from broker.app import NoBroker
from contract.serving import describe_serving
from db import quality, runs, versions
from db.engine import transaction
from pipeline import models as model_rules
from pipeline.errors import UseCaseError
from pipeline.retrain import NotSent, request_retrain
from web import schemas
from web.api_edge import ERRORS, IMMUTABLE, RowId, binary, http_error, state
from web.state import WebState

router = APIRouter(prefix="/api", responses=ERRORS)


# --- models and training ----------------------------------------------------------------------


def _model(view: versions.VersionView, models_dir: FilePath) -> dict[str, Any]:
    return {
        **asdict(view),
        "serving_text": describe_serving(view.serving),
        "has_curves": (models_dir / str(view.id) / "curves.png").is_file(),
    }


@router.get("/models", response_model=schemas.ModelsOut, summary="Model versions")
def models(request: Request) -> schemas.ModelsOut:
    """Every version, and their scores on the held-out images versions are compared on."""
    web = state(request)
    with transaction(web.sessions) as session:
        views = versions.views(session)
        history = versions.score_history(session)
    return schemas.ModelsOut(
        items=[schemas.ModelOut.model_validate(_model(v, web.settings.models_path)) for v in views],
        held_out=versions.latest_scores(history),
        held_out_history=history,
    )


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
    try:
        switched = model_rules.switch(web.sessions, version_id, verb)
    except UseCaseError as exc:
        raise http_error(exc) from None
    return schemas.SwitchOut(active=switched.active, previous=switched.previous or "")


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


@router.get("/runs", response_model=schemas.RunsOut, summary="Recent training runs")
def recent_runs(
    request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> schemas.RunsOut:
    with transaction(state(request).sessions) as session:
        views = runs.recent(session, limit)
    return schemas.RunsOut(items=views)


@router.get("/runs/{run_id:int}", response_model=schemas.RunOut, summary="One training run")
def run(request: Request, run_id: RowId) -> schemas.RunOut:
    return _run(state(request), run_id)


@router.post("/runs/{run_id:int}/cancel", response_model=schemas.RunOut, summary="Stop a run")
def cancel_run(request: Request, run_id: RowId) -> schemas.RunOut:
    """As `retrain --cancel RUN`: a queued run is cancelled at once, a running one stops at its
    next epoch (``cancel_requested`` until then); nothing from it is promoted."""
    web = state(request)
    try:
        model_rules.cancel(web.sessions, run_id)
    except UseCaseError as exc:
        raise http_error(exc) from None
    return _run(web, run_id)
