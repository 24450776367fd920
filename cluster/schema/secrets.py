"""The write-only (secret) fields of a body: sealing them before they are stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cluster.schema._values import join_path
from cluster.schema.fields import Field, ValidationError
from cluster.schema.kinds import kind_schema

__all__ = ["seal_write_only"]

_HOLDS_SECRETS: dict[int, bool] = {}


def _holds_secrets(f: Field) -> bool:
    """Whether a write-only field can occur under ``f`` (memoized: the schema is static)."""
    known = _HOLDS_SECRETS.get(id(f))
    if known is None:
        if f.write_only and f.type == "string":
            known = True
        elif f.type == "object":
            known = any(_holds_secrets(sub) for sub in (f.fields or {}).values())
        elif f.type == "list":
            known = f.item is not None and _holds_secrets(f.item)
        else:
            known = False
        _HOLDS_SECRETS[id(f)] = known
    return known


def seal_write_only(
    kind: str, body: dict[str, Any], existing: dict[str, Any] | None,
    seal: Callable[[str, str], str], is_sealed: Callable[[Any], bool],
) -> dict[str, Any]:
    """In place: every write-only string of a normalized ``body`` becomes ``seal(value, "<kind>:<path>")``.

    A value already in sealed form is kept only when it is the one ``existing`` (the object as
    stored) holds at that path: what PUT or PATCH carried over. A client cannot hand in a sealed
    value of its own (ValidationError naming the field).
    """
    for name, f in _secret_fields(kind):
        if body.get(name) is not None:
            body[name] = _seal(f, body[name], (existing or {}).get(name), name, kind, seal, is_sealed)
    return body


_SECRET_FIELDS: dict[str, list[tuple[str, Field]]] = {}


def _secret_fields(kind: str) -> list[tuple[str, Field]]:
    """The top-level fields of ``kind`` under which a secret can occur (none for most kinds)."""
    known = _SECRET_FIELDS.get(kind)
    if known is None:
        known = _SECRET_FIELDS[kind] = [(n, f) for n, f in kind_schema(kind).fields.items() if _holds_secrets(f)]
    return known


def _seal(f: Field, value: Any, old: Any, path: str, kind: str, seal: Callable[[str, str], str], is_sealed: Callable[[Any], bool]) -> Any:
    if f.type == "string" and f.write_only and isinstance(value, str):
        if is_sealed(value):
            if value != old:
                raise ValidationError(path, "a sealed value can only be the one already stored here; send the secret itself")
            return value
        return seal(value, f"{kind}:{path}")
    if f.type == "object" and isinstance(value, dict) and f.fields is not None:
        for name, sub in f.fields.items():
            if _holds_secrets(sub) and value.get(name) is not None:
                value[name] = _seal(sub, value[name], old.get(name) if isinstance(old, dict) else None, join_path(path, name), kind, seal, is_sealed)
        return value
    if f.type == "list" and isinstance(value, list) and f.item is not None:
        # Items are matched by position: a list of secrets (none today) re-sent in another order re-seals.
        olds = old if isinstance(old, list) else []
        return [_seal(f.item, item, olds[i] if i < len(olds) else None, f"{path}[{i}]", kind, seal, is_sealed) for i, item in enumerate(value)]
    return value
