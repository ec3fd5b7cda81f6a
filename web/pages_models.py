"""The HTML pages of models and training runs (the Models page and its forms), and the API
reference at /docs. Each form calls the JSON API's own function and leaves a flash message
saying what happened."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from db.browse import MAX_ID
from db.models import ModelStatus
from web import api_edge, api_models, schemas
from web.api_docs import endpoints
from web.rendering import Done, render, submit

router = APIRouter(include_in_schema=False)


@router.get("/models", response_class=HTMLResponse)
def models_page(
    request: Request, version: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> HTMLResponse:
    listing = api_models.models(request)
    chosen = (
        version
        if version is not None
        else next((v.id for v in listing.items if v.status == ModelStatus.ACTIVE), None)
    )
    detail = api_models.model(request, chosen) if chosen is not None else None
    quality = api_models.model_quality(request, chosen) if chosen is not None else None
    return render(
        request,
        "models.html",
        "/api/models",
        versions=listing.items,
        held_out=listing.held_out,
        detail=detail,
        quality=quality,
        runs=api_models.recent_runs(request, limit=10).items,
    )


@router.post("/models/{version_id:int}/promote")
def promote_form(request: Request, version_id: api_edge.RowId) -> Response:
    def act() -> Done:
        switched = api_models.promote(request, version_id)
        if switched.active == switched.previous:
            return f"{switched.active} is already the active model"
        return (
            f"{switched.active} is now active (was {switched.previous}); "
            "workers switch within seconds"
        )

    return submit(request, act, "/models")


@router.post("/models/rollback")
def rollback_form(request: Request) -> Response:
    def act() -> Done:
        switched = api_models.rollback(request)
        return f"Rolled back to {switched.active} (was {switched.previous})"

    return submit(request, act, "/models")


@router.post("/retrain")
def retrain_form(request: Request) -> Response:
    def act() -> Done:
        response = Response(status_code=202)  # the API sets 200 when a run was queued already
        run = api_models.retrain(request, response, schemas.RetrainRequestIn())
        if response.status_code == 200:
            return f"Training run {run.id} is already {run.status}: nothing more queued", True
        ended = _settled(request, run.id, SKIP_WAIT_S)
        if ended is not None and ended.status == "skipped":
            return f"Nothing to train: run {run.id} skipped ({ended.message})", True
        return (
            f"Training run {run.id} queued: it is skipped if labeled/ has not changed since "
            "the last run, and promoted only if it beats the active model on the held-out images"
        )

    return submit(request, act, "/models")


SKIP_WAIT_S = 3.0  # a run with nothing new to learn is skipped within a second or two


def _settled(request: Request, run_id: int, wait_s: float) -> schemas.RunOut | None:
    """The run once it has ended, if it ends within ``wait_s`` (a skip does), else None: the
    flash can then say "nothing to train" rather than "queued"."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        run = api_models.run(request, run_id)
        if run.status not in ("running", "queued"):
            return run
        time.sleep(0.2)
    return None


@router.get("/runs/{run_id:int}", response_class=HTMLResponse)
def run_page(request: Request, run_id: api_edge.RowId) -> HTMLResponse:
    """One training run: its progress while it runs (the page refreshes itself, no script
    needed), its epochs and its outcome after."""
    run = api_models.run(request, run_id)
    return render(request, "run.html", f"/api/runs/{run_id}", nav="models", run=run)


@router.post("/runs/{run_id:int}/cancel")
def cancel_run_form(request: Request, run_id: api_edge.RowId) -> Response:
    def act() -> Done:
        run = api_models.cancel_run(request, run_id)
        if run.status == "running":
            return f"Run {run_id} stops at its next epoch; nothing from it is promoted"
        return f"Run {run_id}: {run.status}"

    return submit(request, act, "/models")


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    """The API reference, from the OpenAPI schema (Swagger UI would need a CDN)."""
    schema = request.app.openapi()
    return render(request, "docs.html", "/openapi.json", schema=schema, endpoints=endpoints(schema))
