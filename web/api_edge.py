"""What every JSON endpoint takes and answers: the errors it may give (one shape, declared
for the OpenAPI schema), the types of its path and query parameters (a content hash, a row id,
a cursor: each bounded at the edge), the web process's state, and binary responses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import HTTPException, Path, Query, Request

from db.browse import MAX_CURSOR, MAX_ID
from db.queries import ResultRow
from pipeline.errors import Problem, UseCaseError
from web import schemas
from web.state import WebState

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


#: The one place a use case's problem becomes an HTTP status.
STATUS_OF = {Problem.NOT_FOUND: 404, Problem.CONFLICT: 409, Problem.INVALID: 422}


def http_error(error: UseCaseError) -> HTTPException:
    """A use case's error (pipeline.errors) as the HTTP error the API answers with."""
    return HTTPException(STATUS_OF[error.problem], str(error))


def state(request: Request) -> WebState:
    value: WebState = request.app.state.web
    return value


def item(row: ResultRow) -> schemas.ResultItem:
    return schemas.ResultItem.model_validate(row.to_dict())
