"""The Suspects page: labels in labeled/ the model doubts, decided from the keyboard like the
review queue (its JSON twin is /api/suspects); plain forms without JavaScript."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from web import api_edge, api_labels, api_suspects, schemas
from web.rendering import Done, render, submit

router = APIRouter(include_in_schema=False)

WORDS = {"kept": "kept", "relabeled": "relabeled", "removed": "taken out of training"}


@router.get("/suspects", response_class=HTMLResponse)
def suspects_page(request: Request) -> HTMLResponse:
    page = api_suspects.suspects(request, limit=1)
    return render(
        request,
        "suspects.html",
        "/api/suspects",
        first=page.items[0] if page.items else None,
        remaining=page.remaining,
        run_id=page.run_id,
        classes=[c.model_dump() for c in api_labels.classes(request).items],
    )


@router.post("/suspects/{sha256}")
def decide_form(
    request: Request,
    sha256: api_edge.Sha256,
    decision: Annotated[str, Form(max_length=16)],
    new_label: Annotated[str | None, Form(max_length=1000)] = None,
) -> Response:
    def act() -> Done:
        body = schemas.SuspectDecisionIn.model_validate(
            {"decision": decision, "new_label": (new_label or "").strip() or None}
        )
        done = api_suspects.decide(request, sha256, body)
        where = f" to “{done.new_label}”" if done.new_label else ""
        return f"{WORDS.get(done.decision, done.decision).capitalize()}{where}"

    return submit(request, act, "/suspects")


@router.post("/suspects/{sha256}/undo")
def undo_form(request: Request, sha256: api_edge.Sha256) -> Response:
    def act() -> Done:
        api_suspects.undo(request, sha256)
        return "Decision undone"

    return submit(request, act, "/suspects")
