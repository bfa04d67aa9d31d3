"""Checks for every value that comes from outside (the UI, an API call, the command line).

A request may skip the UI: numbers can be NaN, infinite, 2**70, text, or a list; text can be a
megabyte long; a flag can be any JSON value. Each function here takes the raw value and the
field's name as the UI shows it, and returns a clean Python value or raises `UserError` naming
the field and the allowed range, so that nothing malformed reaches the methods, the store or a
log line.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Any, Iterable

from .errors import UserError

SEED_MAX = 2**32 - 1     # the seeds every method accepts (numpy and torch generators alike)
ID_MAX = 2**63 - 1       # SQLite's INTEGER
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def shown(value: Any, limit: int = 40) -> str:
    """A value as an error message may show it: short, one line, never an object's repr."""
    if isinstance(value, (bool, numbers.Number)):
        text = str(value)
    elif isinstance(value, str):
        text = repr(value)
    else:
        return f"a {type(value).__name__}"
    text = _CONTROL.sub(" ", text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any, field: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise UserError(f"{field}: give a number (got {shown(value)}).")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise UserError(f"{field}: give a number (got {shown(value)}).")
        try:
            value = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise UserError(f"{field}: give a number (got {shown(value)}).") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{field}: give a finite number (got {shown(value)}).")
    return value


def whole(value: Any, field: str, lo: int, hi: int, *, default: int | None = None) -> int:
    """An integer in [lo, hi]; a float with a whole value (3.0) counts. `default` for an empty
    field (None or ""), else an empty field is an error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is not None:
            return default
        raise UserError(f"{field} is empty: give a whole number from {lo} to {hi}.")
    v = _number(value, field)
    if isinstance(v, float):
        if not v.is_integer():
            raise UserError(f"{field}: give a whole number from {lo} to {hi} (got {shown(value)}).")
        v = int(v)
    v = int(v)
    if not lo <= v <= hi:
        raise UserError(f"{field} must be from {lo} to {hi} (got {shown(v)}).")
    return v


def real(value: Any, field: str, lo: float, hi: float, *, default: float | None = None) -> float:
    """A finite float in [lo, hi]; `default` for an empty field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is not None:
            return float(default)
        raise UserError(f"{field} is empty: give a number from {lo:g} to {hi:g}.")
    v = float(_number(value, field))
    if not lo <= v <= hi:
        raise UserError(f"{field} must be from {lo:g} to {hi:g} (got {shown(v)}).")
    return v


def seed(value: Any, field: str = "Seed") -> int:
    return whole(value, field, 0, SEED_MAX)


def record_id(value: Any, field: str) -> int | None:
    """A library id picked from a list (adapter, loop, round, candidate): None when nothing is
    picked, else a whole number from 1 to 2**63 - 1."""
    if value in (None, "", []) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and not re.fullmatch(r"\s*\d{1,19}\s*", value):
        raise UserError(f"{field}: {shown(value)} is not one of the choices; pick one from the list.")
    return whole(value, field, 1, ID_MAX)


def flag(value: Any, field: str) -> bool:
    """A checkbox: true or false (None counts as false)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise UserError(f"{field}: give true or false (got {shown(value)}).")


def text(value: Any, field: str, limit: int, *, default: str = "") -> str:
    """A string of at most `limit` characters (None counts as `default`)."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise UserError(f"{field}: give text (got {shown(value)}).")
    if len(value) > limit:
        raise UserError(f"{field} is {len(value):,} characters long; at most {limit:,}.")
    return value


def choice(value: Any, field: str, options: Iterable[Any]) -> Any:
    """One of `options`, as given."""
    options = list(options)
    if isinstance(value, (str, int, float, bool)) or value is None:
        for o in options:
            if value == o and type(value) is type(o):
                return o
    names = ", ".join(str(o) for o in options[:8])
    raise UserError(f"{field}: {shown(value)} is not one of the choices ({names}).")


def files(value: Any, field: str, limit: int) -> list[str]:
    """What a file field hands over (None, a path, a list of paths or file objects) as paths,
    at most `limit` of them."""
    if value is None or value == []:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    if len(items) > limit:
        raise UserError(f"{field}: {len(items)} files; at most {limit}.")
    out = []
    for f in items:
        if f is None:
            continue
        if isinstance(f, dict):
            f = f.get("path") or f.get("name")
        elif not isinstance(f, str) and hasattr(f, "name") and isinstance(f.name, str):
            f = f.name
        if not isinstance(f, str) or not f or len(f) > 4096:
            raise UserError(f"{field}: could not read the uploaded file; upload it again.")
        out.append(f)
    return out


def prompt_list(prompts: Iterable[str], limit: int = 8) -> list[str]:
    """The non-blank prompts of a batch, stripped: at least one, at most `limit`."""
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise UserError("Write at least one prompt.")
    if len(prompts) > limit:
        raise UserError(f"{len(prompts)} prompts given; at most {limit} at a time.")
    return prompts


def clip_log(value: Any, limit: int = 120) -> str:
    """Text for a log line: one line, at most `limit` characters, with the full length noted."""
    s = value if isinstance(value, str) else repr(type(value))
    s = _CONTROL.sub(" ", s).replace("\n", " ")
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s):,} characters)"
