"""What every HTML page shares: the templates, rendering with the page's JSON twin, the
one-line flash message an action leaves for the page it redirects to, and errors as pages.

A form's POST runs the same API function its JSON twin does, then redirects (303) back; what
the action did (a retrain queued, labels saved, retries sent) travels to that page in a
short-lived cookie and is shown once."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import ValidationError

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
_CODE = re.compile(r"``([^`]+)``|`([^`]+)`")


def prose(text: str | None) -> Markup:
    """A docstring's sentence as HTML: escaped, with its ``code`` and `code` spans as
    <code> (the API reference shows the endpoints' own descriptions)."""
    escaped = str(escape(text or ""))
    return Markup(_CODE.sub(lambda m: f"<code>{m.group(1) or m.group(2)}</code>", escaped))


TEMPLATES.env.filters["prose"] = prose
FLASH_COOKIE = "inbox_classifier_flash"
MAX_FLASH = 600  # characters: a cookie holds about 4 kB, and a flash is one sentence


def render(request: Request, name: str, twin: str | None, **context: Any) -> HTMLResponse:
    """The page ``name`` whose JSON twin is ``twin``, with the flash message, if any, shown
    (and spent)."""
    flash = _flash_of(request)
    response = TEMPLATES.TemplateResponse(
        request,
        name,
        {"twin": twin, "nav": name.removesuffix(".html"), "flash": flash, **context},
    )
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def _flash_of(request: Request) -> tuple[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, text = unquote(raw).partition(":")
    return (kind if kind in ("ok", "warn") else "ok", text[:MAX_FLASH])


def back(request: Request, default: str, flash: str | None = None, warn: bool = False) -> Response:
    """After a form's action: where the form said (a path on this site only), or ``default``,
    carrying ``flash`` to that page."""
    target = request.query_params.get("next") or default
    if not target.startswith("/") or target.startswith("//"):
        target = default
    redirect = RedirectResponse(target, status_code=303)
    if flash:
        value = quote(f"{'warn' if warn else 'ok'}:{flash[:MAX_FLASH]}", safe="")
        redirect.set_cookie(FLASH_COOKIE, value, max_age=60, path="/", samesite="strict")
    return redirect


Done = str | tuple[str, bool] | None  # what an action says: a flash, optionally a warning


def submit(request: Request, action: Callable[[], Done], default: str) -> Response:
    """A form's POST: the API call ``action`` (returning its flash), then :func:`back`; its
    error as a page."""
    try:
        said = action()
    except HTTPException as exc:
        return error_page(request, exc)
    except ValidationError as exc:  # a form field the API's request model refuses
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        return error_page(request, HTTPException(422, problems))
    text, warn = said if isinstance(said, tuple) else (said, False)
    return back(request, default, text, warn)


def error_page(request: Request, exc: HTTPException) -> HTMLResponse:
    response = render(request, "error.html", None, status=exc.status_code, detail=exc.detail)
    response.status_code = exc.status_code
    return response
