"""What a use case says went wrong, in the domain's words: no such thing, a conflict with the
state things are in, or a request that cannot be right. The web layer maps these to HTTP
statuses in one place (web.api_edge.http_error); the CLI prints the message."""

from __future__ import annotations

from enum import StrEnum


class Problem(StrEnum):
    NOT_FOUND = "not_found"  # no such image, version or run
    CONFLICT = "conflict"  # the thing is in a state that forbids it (a file gone, a model missing)
    INVALID = "invalid"  # the request itself cannot be right (a class name, an unknown class)


class UseCaseError(Exception):
    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
