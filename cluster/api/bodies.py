"""What the API accepts as a JSON body, before any handler sees it.

The log stores bodies as msgpack, which holds integers in [-2⁶³, 2⁶⁴) and UTF-8 text only; a
value outside that would be accepted here and fail on its way into a Raft entry. So a body is
refused at once, naming the field, when it nests deeper than :data:`MAX_DEPTH`, holds an integer
msgpack cannot, or a string (key or value) that is not valid Unicode text (a lone surrogate).
"""

from __future__ import annotations

import json
from typing import Any

from cluster.decide import CommandError

__all__ = ["MAX_DEPTH", "parse_json", "check_text"]

#: the deepest nesting of objects and lists a body may have (the deepest object kind needs 6)
MAX_DEPTH = 32
_INT_MIN, _INT_END = -(2**63), 2**64


def parse_json(raw: bytes) -> Any:
    """The JSON document in ``raw``; 400 when it is not JSON, 422 naming the field that cannot be stored."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise CommandError(400, f"the body nests deeper than {MAX_DEPTH} levels", "body") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(400, f"the body is not valid JSON: {exc}", "body") from None
    _check(doc, "", 0)
    return doc


def check_text(value: str, field: str) -> None:
    """422 naming ``field`` when ``value`` is not text UTF-8 can hold (a lone surrogate, e.g. ``\\ud800``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CommandError(422, "must be valid Unicode text (it holds a lone surrogate)", field or "body") from None


def _check(value: Any, path: str, depth: int) -> None:
    kind = type(value)
    if kind is str:
        check_text(value, path)
    elif kind is int:
        if not _INT_MIN <= value < _INT_END:
            raise CommandError(422, "is outside the integers this API stores (-2^63 to 2^64 - 1)", path or "body")
    elif kind is dict:
        if depth >= MAX_DEPTH:
            raise CommandError(400, f"the body nests deeper than {MAX_DEPTH} levels", path or "body")
        for key, item in value.items():
            field = f"{path}.{key}" if path else key
            check_text(key, field)
            _check(item, field, depth + 1)
    elif kind is list:
        if depth >= MAX_DEPTH:
            raise CommandError(400, f"the body nests deeper than {MAX_DEPTH} levels", path or "body")
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", depth + 1)
