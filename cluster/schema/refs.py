"""Walking the refs of a body (list, rewrite in place, map into a copy, check for duplicates),
redaction of write-only fields for responses, and ``?skip_default=true``'s default removal."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from cluster.schema._values import SCALARS, join_path, thaw
from cluster.schema.fields import Field, KindSchema, Missing, ValidationError
from cluster.schema.kinds import KINDS, kind_schema

__all__ = ["check_unique_refs", "map_refs", "redact", "ref_fields", "rewrite_refs", "without_defaults"]

# KINDS.get bound once for the per-request cache checks below: CPython 3.11 calls a method of a
# from-imported name through a bound method made on every call. KINDS is only changed in place.
_kinds_get = KINDS.get


def _copy(value: Any) -> Any:
    """A deep copy; scalars (immutable) are returned as they are, the common case on hot paths."""
    return value if type(value) in SCALARS else copy.deepcopy(value)


_HOLDS_REFS: dict[int, bool] = {}


def _holds_refs(f: Field) -> bool:
    """Whether any ref can occur under ``f`` (memoized: the schema is static)."""
    known = _HOLDS_REFS.get(id(f))
    if known is None:
        if f.type == "ref":
            known = True
        elif f.type == "object":
            known = any(_holds_refs(sub) for sub in (f.fields or {}).values())
        elif f.type == "list":
            known = f.item is not None and _holds_refs(f.item)
        else:
            known = False
        _HOLDS_REFS[id(f)] = known
    return known


def _walk_refs(f: Field, value: Any, path: str) -> Iterator[tuple[str, str, str]]:
    if value is None or not _holds_refs(f):
        return
    if f.type == "ref":
        if isinstance(value, str):
            assert f.ref is not None
            yield path, f.ref, value
    elif f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        for name, sub in f.fields.items():
            yield from _walk_refs(sub, value.get(name), join_path(path, name))
    elif f.type == "list":
        assert f.item is not None
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _walk_refs(f.item, item, f"{path}[{i}]")
        elif f.item.type == "ref":
            # a lone ref where a list is expected (PATCH delete of one item)
            yield from _walk_refs(f.item, value, path)


def ref_fields(kind: str, body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field path, target kind, ref value) for every ref present in ``body``, in schema order.
    Tolerant: a partial or not yet validated body is walked as far as its shape allows."""
    out: list[tuple[str, str, str]] = []
    for name, walk in _compiled_ref_walk(kind):
        value = body.get(name)
        if value is not None:
            walk(value, name, out)
    return out


# (value, its field path, out): appends what _walk_refs yields for a non-null value.
_RefWalk = Callable[[Any, str, list[tuple[str, str, str]]], None]
_REF_WALKS: dict[str, tuple[KindSchema, list[tuple[str, _RefWalk]]]] = {}


def _compiled_ref_walk(kind: str) -> list[tuple[str, _RefWalk]]:
    """:func:`_walk_refs` for each ref-holding field of ``kind``, compiled once into closures."""
    known = _REF_WALKS.get(kind)
    if known is None or known[0] is not _kinds_get(kind):
        ks = kind_schema(kind)
        known = _REF_WALKS[kind] = (ks, [(name, _compile_ref_walk(f)) for name, f in _ref_holding_fields(kind)])
    return known[1]


def _compile_ref_walk(f: Field) -> _RefWalk:
    if f.type == "ref":
        target = f.ref
        assert target is not None

        def ref(value: Any, path: str, out: list[tuple[str, str, str]]) -> None:
            if isinstance(value, str):
                out.append((path, target, value))

        return ref
    if f.type == "object":
        assert f.fields is not None
        subs = [(name, _compile_ref_walk(sub)) for name, sub in f.fields.items() if _holds_refs(sub)]

        def obj(value: Any, path: str, out: list[tuple[str, str, str]]) -> None:
            if isinstance(value, dict):
                for name, walk in subs:
                    item = value.get(name)
                    if item is not None:
                        walk(item, join_path(path, name), out)

        return obj
    assert f.type == "list" and f.item is not None
    walk_item = _compile_ref_walk(f.item)
    lone_ref = f.item.type == "ref"

    def items(value: Any, path: str, out: list[tuple[str, str, str]]) -> None:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is not None:
                    walk_item(item, f"{path}[{i}]", out)
        elif lone_ref:
            # a lone ref where a list is expected (PATCH delete of one item)
            walk_item(value, path, out)

    return items


_REF_HOLDING: dict[str, list[tuple[str, Field]]] = {}


def _ref_holding_fields(kind: str) -> list[tuple[str, Field]]:
    known = _REF_HOLDING.get(kind)
    if known is None:
        known = _REF_HOLDING[kind] = [(n, f) for n, f in kind_schema(kind).fields.items() if _holds_refs(f)]
    return known


def rewrite_refs(kind: str, body: dict[str, Any], fn: Callable[[str, str, str], Any]) -> dict[str, Any]:
    """In place: every ref value ``v`` (target kind ``t``, at field path ``p``) of ``body`` becomes
    ``fn(t, v, p)``; only the branches that can hold refs are walked. For a body the caller owns
    (e.g. what :func:`normalize` just returned); :func:`map_refs` copies instead."""
    for name, f in _ref_holding_fields(kind):
        value = body.get(name)
        if value is not None:
            body[name] = _rewrite(f, value, name, fn)
    return body


def check_unique_refs(kind: str, body: dict[str, Any]) -> None:
    """ValidationError naming the item when a list of refs that must be unique names one object
    twice. Run on refs made canonical: two spellings of one ref (by name, by URL) are the same."""
    for name, f, ref_list in _unique_ref_holding_fields(kind):
        value = body.get(name)
        if value is None:
            continue
        # On the bulk write path: a top-level list of refs is checked with one set first.
        if ref_list and type(value) is list and (len(value) < 2 or len(set(value)) == len(value)):
            continue
        _check_unique_refs(f, value, name)


_UNIQUE_REF_HOLDING: dict[str, list[tuple[str, Field, bool]]] = {}


def _unique_ref_holding_fields(kind: str) -> list[tuple[str, Field, bool]]:
    """The top-level fields of ``kind`` under which a list of refs that must be unique can occur,
    each with whether it is that list itself."""
    known = _UNIQUE_REF_HOLDING.get(kind)
    if known is None:
        known = _UNIQUE_REF_HOLDING[kind] = [
            (n, f, f.type == "list" and f.item is not None and f.item.type == "ref" and f.unique_by == ("",))
            for n, f in _ref_holding_fields(kind) if _holds_unique_refs(f)
        ]
    return known


def _holds_unique_refs(f: Field) -> bool:
    if f.type == "list":
        assert f.item is not None
        return (f.item.type == "ref" and f.unique_by == ("",)) or _holds_unique_refs(f.item)
    if f.type == "object":
        return any(_holds_unique_refs(sub) for sub in (f.fields or {}).values())
    return False


def _check_unique_refs(f: Field, value: Any, path: str) -> None:
    if f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        for name, sub in f.fields.items():
            item = value.get(name)
            if item is not None and _holds_refs(sub):
                _check_unique_refs(sub, item, join_path(path, name))
    elif f.type == "list" and isinstance(value, list):
        assert f.item is not None
        if f.item.type == "ref" and f.unique_by == ("",):
            seen: dict[Any, int] = {}
            for i, item in enumerate(value):
                if item in seen:
                    raise ValidationError(f"{path}[{i}]", f"duplicate of {path}[{seen[item]}] (both refer to the same {f.item.ref})")
                seen[item] = i
        elif _holds_refs(f.item):
            for i, item in enumerate(value):
                _check_unique_refs(f.item, item, f"{path}[{i}]")


def _rewrite(f: Field, value: Any, path: str, fn: Callable[[str, str, str], Any]) -> Any:
    if f.type == "ref":
        assert f.ref is not None
        return fn(f.ref, value, path) if isinstance(value, str) else value
    if f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        for name, sub in f.fields.items():
            if _holds_refs(sub):
                item = value.get(name)
                if item is not None:
                    value[name] = _rewrite(sub, item, join_path(path, name), fn)
        return value
    if f.type == "list" and isinstance(value, list):
        assert f.item is not None
        for i, item in enumerate(value):
            value[i] = _rewrite(f.item, item, f"{path}[{i}]", fn)
    return value


def _transform(f: Field, value: Any, on_ref: Callable[[str, str], Any], drop_write_only: bool) -> Any:
    if value is None:
        return None
    if f.type == "ref":
        assert f.ref is not None
        return on_ref(f.ref, value) if isinstance(value, str) else _copy(value)
    if f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        out = {}
        for key, sub in value.items():
            sf = f.fields.get(key)
            if sf is None:
                out[key] = _copy(sub)
            elif not (drop_write_only and sf.write_only):
                out[key] = _transform(sf, sub, on_ref, drop_write_only)
        return out
    if f.type == "list":
        assert f.item is not None
        if isinstance(value, list):
            return [_transform(f.item, item, on_ref, drop_write_only) for item in value]
        if f.item.type == "ref" and isinstance(value, str):
            return _transform(f.item, value, on_ref, drop_write_only)
    return _copy(value)


def map_refs(kind: str, body: dict[str, Any], fn: Callable[[str, str], Any]) -> dict[str, Any]:
    """A deep copy of ``body`` with every ref value ``v`` (target kind ``t``) replaced by
    ``fn(t, v)``. Fields outside the schema are copied unchanged. Works on partial bodies too
    (e.g. one part of a PATCH)."""
    return _compiled_transform(kind, False)(body, fn)


def _same_ref(_target: str, value: str) -> str:
    return value


def redact(kind: str, body: dict[str, Any], refs: Callable[[str, str], Any] = _same_ref) -> dict[str, Any]:
    """A deep copy of ``body`` without its write-only fields (for responses), with every ref value
    ``v`` (target kind ``t``) replaced by ``refs(t, v)`` (by default kept as it is)."""
    return _compiled_transform(kind, True)(body, refs)


def without_defaults(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (as rendered) without the fields that hold their schema default, in nested objects
    too (``?skip_default=true``). Refs are kept: their default is a name, the body holds a URL."""
    return _without_defaults(kind_schema(kind).fields, body)


def _without_defaults(fields: Mapping[str, Field], body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in body.items():
        f = fields.get(key)
        if f is None:
            out[key] = value
            continue
        if f.has_default and f.type != "ref" and value == thaw(f.default):
            continue
        if f.type == "object" and isinstance(value, dict) and f.fields is not None:
            value = _without_defaults(f.fields, value)
        elif f.type == "list" and isinstance(value, list) and f.item is not None and f.item.type == "object" and f.item.fields:
            value = [_without_defaults(f.item.fields, v) if isinstance(v, dict) else v for v in value]
        out[key] = value
    return out


# (value, on_ref) -> what _transform returns for the same field, value, on_ref and drop_write_only.
_Transform = Callable[[Any, Callable[[str, str], Any]], Any]
_TRANSFORMS: dict[tuple[str, bool], tuple[KindSchema, _Transform]] = {}
_DROP: Any = Missing()


def _compiled_transform(kind: str, drop_write_only: bool) -> _Transform:
    """:func:`_transform` of a whole ``kind`` body, compiled once into closures."""
    known = _TRANSFORMS.get((kind, drop_write_only))
    if known is None or known[0] is not _kinds_get(kind):
        ks = kind_schema(kind)
        compiled = _compile_transform(Field("object", fields=ks.fields), drop_write_only)
        known = _TRANSFORMS[(kind, drop_write_only)] = (ks, compiled)
    return known[1]


def _copy_value(value: Any, _on_ref: Callable[[str, str], Any]) -> Any:
    return value if type(value) in SCALARS else copy.deepcopy(value)


def _compile_transform(f: Field, drop_write_only: bool) -> _Transform:
    if f.type == "ref":
        target = f.ref
        assert target is not None

        def ref(value: Any, on_ref: Callable[[str, str], Any]) -> Any:
            if isinstance(value, str):
                return on_ref(target, value)
            return value if type(value) in SCALARS else copy.deepcopy(value)

        return ref
    if f.type == "object":
        assert f.fields is not None
        # A field missing here (scalar types, and keys outside the schema) is copied as it is.
        subs: dict[str, Any] = {}
        for name, sub in f.fields.items():
            if drop_write_only and sub.write_only:
                subs[name] = _DROP
            elif sub.type in ("ref", "object", "list"):
                subs[name] = _compile_transform(sub, drop_write_only)

        def obj(value: Any, on_ref: Callable[[str, str], Any]) -> Any:
            if not isinstance(value, dict):
                return value if type(value) in SCALARS else copy.deepcopy(value)
            out = {}
            for key, item in value.items():
                transform = subs.get(key)
                if transform is None:
                    out[key] = item if type(item) in SCALARS else copy.deepcopy(item)
                elif transform is not _DROP:
                    out[key] = None if item is None else transform(item, on_ref)
            return out

        return obj
    if f.type == "list":
        assert f.item is not None
        transform_item = _compile_transform(f.item, drop_write_only)
        lone_ref = f.item.type == "ref"

        def items(value: Any, on_ref: Callable[[str, str], Any]) -> Any:
            if isinstance(value, list):
                return [None if item is None else transform_item(item, on_ref) for item in value]
            if lone_ref and isinstance(value, str):
                return transform_item(value, on_ref)
            return value if type(value) in SCALARS else copy.deepcopy(value)

        return items
    return _copy_value
