"""PATCH: an Avi ``{add, replace, delete}`` or ``json_patch`` body applied to a stored object,
giving the client-style body that normalize then checks."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from cluster.schema._values import get_path, json_type, match_int_text
from cluster.schema.fields import SERVER_MANAGED_FIELDS, Field, ValidationError
from cluster.schema.kinds import kind_schema
from cluster.schema.refs import map_refs

__all__ = ["PATCH_OPERATIONS", "apply_patch"]


def _loose_equal(stored: Any, given: Any) -> bool:
    if isinstance(stored, dict) and isinstance(given, dict):
        return all(_loose_equal(stored.get(k), v) for k, v in given.items() if v is not None)
    if isinstance(stored, int) and not isinstance(stored, bool) and isinstance(given, str) and match_int_text(given):
        return stored == int(given)
    return bool(stored == given)


def _same_identity(unique_by: tuple[str, ...], old: dict[str, Any], item: dict[str, Any]) -> bool:
    return all(
        (get_path(old, k) is None and get_path(item, k) is None)
        or (get_path(item, k) is not None and _loose_equal(get_path(old, k), get_path(item, k)))
        for k in unique_by
    )


def _deep_merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for k, v in extra.items():
            if v is not None:
                out[k] = _deep_merge(base.get(k), v)
        return out
    return copy.deepcopy(extra)


def _patch_part(fields: Mapping[str, Field], op: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise ValidationError(op, f"expected object, got {json_type(part)}")
    for key, value in part.items():
        if key not in fields and key not in SERVER_MANAGED_FIELDS and value is not None:
            raise ValidationError(key, "unknown field (not supported by avictl)")
    return {k: v for k, v in part.items() if k in fields}


def _set_alias_aware(fields: Mapping[str, Field], body: dict[str, Any], key: str, value: Any) -> None:
    f = fields[key]
    if f.alias_for is not None:
        body.pop(f.alias_for, None)
    body[key] = copy.deepcopy(value)


def _patch_add(fields: Mapping[str, Field], body: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if value is None:
            continue
        f = fields[key]
        if f.type == "list":
            assert f.item is not None
            items = value if isinstance(value, list) else [value]
            current = body.get(key)
            merged = list(current) if isinstance(current, list) else []
            for item in items:
                if item is None:
                    continue
                if isinstance(item, dict) and f.unique_by:
                    same = [i for i, old in enumerate(merged) if isinstance(old, dict) and _same_identity(f.unique_by, old, item)]
                    if same:
                        merged[same[0]] = _deep_merge(merged[same[0]], item)
                        continue
                elif not isinstance(item, dict) and any(_loose_equal(old, item) for old in merged):
                    continue
                merged.append(copy.deepcopy(item))
            body[key] = merged
        elif f.type == "object":
            body[key] = _deep_merge(body.get(key), value)
        else:
            _set_alias_aware(fields, body, key, value)


def _patch_delete(fields: Mapping[str, Field], body: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        f = fields[key]
        if f.type == "list" and value is not None:
            items = value if isinstance(value, list) else [value]
            current = body.get(key)
            if isinstance(current, list):
                body[key] = [old for old in current if not any(_loose_equal(old, g) for g in items if g is not None)]
        elif f.type == "object" and isinstance(value, dict) and isinstance(body.get(key), dict):
            assert f.fields is not None
            inner = dict(body[key])
            _patch_delete(f.fields, inner, {k: v for k, v in value.items() if k in f.fields})
            body[key] = inner
        else:
            body.pop(key, None)
            if f.alias_for is not None:
                body.pop(f.alias_for, None)


_POINTER_TOKEN = re.compile(r"~[01]")


def _pointer(path: Any, where: str) -> list[str]:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValidationError(where, "a JSON pointer starting with '/' is required")
    return [_POINTER_TOKEN.sub(lambda m: "~" if m.group() == "~0" else "/", t) for t in path[1:].split("/")]


def _json_patch(fields: Mapping[str, Field], body: dict[str, Any], ops: Any) -> None:
    if not isinstance(ops, list):
        raise ValidationError("json_patch", f"expected array, got {json_type(ops)}")
    for n, op in enumerate(ops):
        where = f"json_patch[{n}]"
        if not isinstance(op, dict):
            raise ValidationError(where, f"expected object, got {json_type(op)}")
        kind = op.get("op")
        if kind not in ("add", "remove", "replace"):
            raise ValidationError(f"{where}.op", f"{kind!r} is not one of: add, remove, replace")
        tokens = _pointer(op.get("path"), f"{where}.path")
        if tokens[0] not in fields:
            raise ValidationError(tokens[0], "unknown field (not supported by avictl)")
        parent: Any = body
        for t in tokens[:-1]:
            if isinstance(parent, list) and t.isdigit() and int(t) < len(parent):
                parent = parent[int(t)]
            elif isinstance(parent, dict) and parent.get(t) is not None:
                parent = parent[t]
            else:
                raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
        last = tokens[-1]
        value = copy.deepcopy(op.get("value"))
        if isinstance(parent, list):
            if last == "-" and kind == "add":
                parent.append(value)
                continue
            if not last.isdigit() or int(last) > len(parent) or (kind != "add" and int(last) == len(parent)):
                raise ValidationError(f"{where}.path", f"{op['path']!r}: index out of range")
            i = int(last)
            if kind == "add":
                parent.insert(i, value)
            elif kind == "remove":
                del parent[i]
            else:
                parent[i] = value
            continue
        if not isinstance(parent, dict):
            raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
        f = fields.get(last) if parent is body else None
        if kind == "add" and f is not None and f.type == "list" and isinstance(parent.get(last), list):
            # Avi reading of "add" on a whole list: append the given item(s), as the SDK sample
            # (add_server_to_pool) expects; RFC 6902 would replace the list.
            parent[last] = parent[last] + (value if isinstance(value, list) else [value])
        elif kind == "remove":
            if last not in parent:
                raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
            del parent[last]
        else:
            if kind == "replace" and last not in parent:
                raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
            if f is not None and f.alias_for is not None:
                parent.pop(f.alias_for, None)
            parent[last] = value


PATCH_OPERATIONS = ("replace", "add", "delete", "json_patch")


def apply_patch(
    kind: str,
    stored: dict[str, Any],
    patch: Any,
    *,
    resolve: Callable[[str, str], Any] | None = None,
) -> dict[str, Any]:
    """Apply an Avi PATCH body to ``stored`` and return the client-style body to pass to
    ``normalize(kind, body, existing=stored)``.

    ``{"add": {...}, "replace": {...}, "delete": {...}}``, applied in the order replace, add,
    delete, then ``json_patch`` (the newer ``[{op, path, value}]`` form that avisdk's samples use).

    * replace: set each given field (a list or object is replaced whole).
    * add: list fields get the given items appended. An object item whose identity
      (``unique_by``, e.g. a server's ip.addr + port) is already there is merged into the
      existing item, and a scalar item already present is skipped, so re-running an add changes
      nothing. Object fields are deep-merged and scalar fields are set.
    * delete: list fields lose every item that matches a given item. A given object item matches
      when all of the fields it gives are equal (``{"ip": {"addr": "10.0.0.1"}}`` matches that
      server on any port). A null or missing item deletes nothing. An object field given with an
      object deletes inside it. Any other field is reset (removed, so that normalize puts its
      default back). Its value is ignored, and ``null`` works.
    * Null values count as not given (except as a delete selector), and unknown fields are refused.

    Refs in ``stored`` are in the caller's canonical form. Pass ``resolve`` (the same resolver
    used with :func:`map_refs` on input) so that refs in the patch are compared in that form too.
    """
    ks = kind_schema(kind)
    if not isinstance(patch, dict):
        raise ValidationError("", f"a PATCH body must be an object, got {json_type(patch)}")
    unknown = [k for k in patch if k not in PATCH_OPERATIONS]
    if unknown:
        raise ValidationError(unknown[0], f"unknown PATCH operation; use one of: {', '.join(PATCH_OPERATIONS)}")
    if not any(patch.get(op) is not None for op in PATCH_OPERATIONS):
        raise ValidationError("", f"a PATCH body needs one of: {', '.join(PATCH_OPERATIONS)}")
    body = copy.deepcopy(stored)
    fields = ks.fields
    for op in ("replace", "add", "delete"):
        if patch.get(op) is None:
            continue
        part = _patch_part(fields, op, patch[op])
        if resolve is not None:
            part = map_refs(kind, part, resolve)
        if op == "replace":
            for key, value in part.items():
                if value is not None:
                    _set_alias_aware(fields, body, key, value)
        elif op == "add":
            _patch_add(fields, body, part)
        else:
            _patch_delete(fields, body, part)
    if patch.get("json_patch") is not None:
        _json_patch(fields, body, patch["json_patch"])
    return body
