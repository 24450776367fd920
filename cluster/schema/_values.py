"""Helpers over JSON values and dotted field paths, shared by the schema's modules."""

from __future__ import annotations

import copy
import re
from typing import Any

__all__ = ["INT_TEXT", "SCALARS", "get_path", "join_path", "json_type", "match_int_text", "thaw"]

SCALARS: tuple[type, ...] = (str, int, float, bool, type(None))  # immutable: never copied
# Decimal text an integer field accepts in place of a number ("port": "8080").
INT_TEXT = re.compile(r"^\s*[+-]?\d{1,30}\s*$")  # bounded: int() refuses over 4 300 digits
# INT_TEXT.match bound once for the modules that import it: CPython 3.11 calls a method of a
# from-imported name through a bound method made on every call (it emits no LOAD_METHOD there).
match_int_text = INT_TEXT.match


def join_path(path: str, name: str) -> str:
    """The dotted path of field ``name`` under ``path`` (``""`` at the top)."""
    return f"{path}.{name}" if path else name


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, as an error message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def thaw(value: Any) -> Any:
    """A fresh JSON value of a field default: tuples (how defaults are frozen) become lists,
    containers are copied."""
    if type(value) in SCALARS:
        return value
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return copy.deepcopy(value)


def get_path(value: Any, dotted: str) -> Any:
    """The value at a dotted path of nested objects, or None where the path leaves them."""
    if not dotted:
        return value
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
