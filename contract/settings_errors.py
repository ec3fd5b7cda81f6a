"""Saying what is wrong with the settings: one line per bad value naming its variable and
what it takes, and a warning for each ``INBOX_CLASSIFIER_*`` variable that is no setting."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import get_args

from pydantic import ValidationError

from contract.settings import ENV_PREFIX, Settings

#: Variables with the prefix that are not settings: `up` sets it for its children.
NOT_SETTINGS = frozenset({ENV_PREFIX + "SUPERVISOR_PID"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``INBOX_CLASSIFIER_*`` name in ``environ`` that is no setting
    (a typo is otherwise silently ignored), naming the closest known one."""
    known = [name.upper() for name in Settings.model_fields]
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS:
            continue
        suffix = upper.removeprefix(ENV_PREFIX)
        if suffix in known:
            continue
        close = difflib.get_close_matches(suffix, known, n=1, cutoff=0.6)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else " (see the settings docs)"
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


def dotenv_names(path: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """The variable names a ``.env`` file sets (values are not needed to judge the names)."""
    names: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                name = line.strip().removeprefix("export ").partition("=")[0].strip()
                if name and not name.startswith("#"):
                    names[name] = ""
    except OSError:
        pass
    return names


def settings_problems(error: ValidationError, flags: Mapping[str, str] | None = None) -> list[str]:
    """One line per bad setting, naming its variable (or the command-line flag in ``flags``,
    field -> flag, that set it), what it got and what it takes."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        variable = ENV_PREFIX + field.upper() if field else "settings"
        if flags and field in flags:
            variable = flags[field]
        given = problem.get("input")
        shown = "" if isinstance(given, dict) or given is None else f"={given!s:.80}"
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "string_pattern_mismatch" and field == "device":
            message = "use auto, cpu, cuda or cuda:N"
        if not field:  # a rule across settings, or one that names its variable itself
            lines.append(message)
            continue
        span = allowed_range(field)
        if span and problem["type"] in NUMBER_PROBLEMS:
            message = f"{message.rstrip('.')}; allowed: {span}"
        lines.append(f"{variable}{shown}: {message}")
    return lines


#: pydantic's error types for a number out of range or not a number at all.
NUMBER_PROBLEMS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "finite_number",
        "int_parsing",
        "int_from_float",
        "float_parsing",
        "int_type",
        "float_type",
    }
)


def allowed_range(field: str) -> str | None:
    """A number setting's range in words (``1 to 1024``, ``more than 0, at most 10``), or
    None for a setting without bounds."""
    info = Settings.model_fields.get(field)
    if info is None:
        return None
    low = high = ""
    for rule in info.metadata:
        for attribute, words in (("ge", "{} or more"), ("gt", "more than {}")):
            if getattr(rule, attribute, None) is not None:
                low = words.format(_number(getattr(rule, attribute)))
        for attribute, words in (("le", "at most {}"), ("lt", "less than {}")):
            if getattr(rule, attribute, None) is not None:
                high = words.format(_number(getattr(rule, attribute)))
    text = ", ".join(part for part in (low, high) if part)
    if text and type(None) in get_args(info.annotation):
        text += " (or null)"
    return text or None


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"
