"""normalize: a client body checked against its kind and returned in the stored form, by normalizers
compiled once per kind with the schema walk as their reference; and the local cloud's VIP range."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from cluster.schema._values import (
    INT_TEXT,
    SCALARS,
    get_path,
    join_path,
    json_type,
    match_int_text,
    thaw,
)
from cluster.schema.fields import (
    MISSING,
    SERVER_MANAGED_FIELDS,
    Field,
    KindSchema,
    Missing,
    ValidationError,
    name_ref,
)
from cluster.schema.kinds import kind_schema

__all__ = ["check_local_vip", "check_local_vips", "normalize", "normalize_reference"]


# -- normalize -------------------------------------------------------------------------------------


_TYPE_NAMES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "enum": "string",
    "ref": "string (a reference)",
    "object": "object",
    "list": "array",
}
# Dotted-quad IPv4 exactly as ipaddress.IPv4Address accepts it (no leading zeros, no spaces),
# ~10x cheaper than constructing one (it was 7 % of a controller's CPU under bulk writes).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\Z")
# A name that becomes a file name and a process's identity on an SE host (``<prefix>-<n>``): a
# letter or digit, then letters, digits, '_', '.', '-', never '..'.
_NAME_TOKEN = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")

#: string formats: format -> (match function, message for a value that does not match)
_FORMATS: dict[str, tuple[Callable[[str], Any], str]] = {
    "ipv4": (_IPV4.match, "{value!r} is not a valid IPv4 address"),
    "name_token": (_NAME_TOKEN.match, "{value!r} must be a letter or digit, then up to 99 letters, digits, '_', '.' or '-' (no '..')"),
}


def _wrong_type(f: Field, value: Any, path: str) -> ValidationError:
    return ValidationError(path, f"expected {_TYPE_NAMES[f.type]}, got {json_type(value)}")


def _check_range(f: Field, value: float, path: str) -> None:
    lo, hi = f.minimum, f.maximum
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            raise ValidationError(path, f"must be between {lo} and {hi}, got {value}")
        if lo is not None:
            raise ValidationError(path, f"must be at least {lo}, got {value}")
        raise ValidationError(path, f"must be at most {hi}, got {value}")


def _check_enum(f: Field, value: str, path: str) -> None:
    if value not in f.enum:
        raise ValidationError(path, f"{value!r} is not one of: {', '.join(f.enum)}")


def _normalize_value(f: Field, value: Any, existing: Any, path: str, internal: bool) -> Any:
    t = f.type
    if t == "string":
        if not isinstance(value, str):
            raise _wrong_type(f, value, path)
        if f.min_length is not None and len(value.strip()) < f.min_length:
            raise ValidationError(path, "must not be empty" if f.min_length == 1 else f"must be at least {f.min_length} characters")
        if f.format is not None:
            matcher, wrong = _FORMATS[f.format]
            if not matcher(value):
                raise ValidationError(path, wrong.format(value=value))
        if f.enum:
            _check_enum(f, value, path)
        return value
    if t == "integer":
        if isinstance(value, bool):
            raise _wrong_type(f, value, path)
        if (isinstance(value, str) and match_int_text(value)) or (isinstance(value, float) and value.is_integer()):
            value = int(value)
        if not isinstance(value, int):
            raise _wrong_type(f, value, path)
        _check_range(f, value, path)
        return value
    if t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(f, value, path)
        _check_range(f, value, path)
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise _wrong_type(f, value, path)
        return value
    if t == "enum":
        if not isinstance(value, str):
            raise ValidationError(path, f"expected one of: {', '.join(f.enum)}; got {json_type(value)}")
        _check_enum(f, value, path)
        return value
    if t == "ref":
        if not isinstance(value, str):
            raise _wrong_type(f, value, path)
        if not value.strip():
            raise ValidationError(path, f"a reference to a {f.ref} must not be empty")
        return value
    if t == "object":
        assert f.fields is not None
        return _normalize_object(f.fields, value, existing if isinstance(existing, dict) else None, path, internal)
    if t == "list":
        return _normalize_list(f, value, path, internal)
    raise AssertionError(f"unknown field type {t!r}")


def _normalize_list(f: Field, value: Any, path: str, internal: bool) -> list[Any]:
    if not isinstance(value, list):
        raise _wrong_type(f, value, path)
    assert f.item is not None
    if f.min_items is not None and len(value) < f.min_items:
        raise ValidationError(path, f"needs at least {f.min_items} item{'s' if f.min_items > 1 else ''}")
    if f.max_items is not None and len(value) > f.max_items:
        raise ValidationError(path, f"has {len(value)} items; at most {f.max_items} are allowed")
    out = []
    for i, item in enumerate(value):
        ipath = f"{path}[{i}]"
        if item is None:
            raise ValidationError(ipath, f"expected {_TYPE_NAMES[f.item.type]}, got null")
        out.append(_normalize_value(f.item, item, None, ipath, internal))
    if f.item.type == "object" and f.item.fields is not None:
        _assign_auto_ids(f.item.fields, out)
    if f.unique_by is not None:
        seen: dict[Any, int] = {}
        for i, item in enumerate(out):
            key = _item_key(f.unique_by, item)
            if key in seen:
                what = ", ".join(k for k in f.unique_by if k) or "value"
                raise ValidationError(f"{path}[{i}]", f"duplicate of {path}[{seen[key]}] (same {what})")
            seen[key] = i
    return out


def _assign_auto_ids(fields: Mapping[str, Field], items: list[dict[str, Any]]) -> None:
    for name, f in fields.items():
        if not f.auto_id:
            continue
        used = {item[name] for item in items if name in item}
        counter = 1
        for item in items:
            if name not in item:
                while str(counter) in used:
                    counter += 1
                item[name] = str(counter)
                used.add(str(counter))
        # keep the schema's key order in items that just got an id
        for i, item in enumerate(items):
            items[i] = {k: item[k] for k in fields if k in item}


def _item_key(unique_by: tuple[str, ...], item: Any) -> Any:
    return tuple(_freeze(get_path(item, k)) for k in unique_by)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _condition(f: Field, attr: str, out: dict[str, Any]) -> bool | None:
    rule = getattr(f, attr)
    if rule is None:
        return None
    sibling, values = rule
    return out.get(sibling) in values


_FIELD_ORDER: dict[int, tuple[Mapping[str, Field], list[str]]] = {}


def _field_order(fields: Mapping[str, Field]) -> list[str]:
    """Unconditional fields first, then those whose presence depends on a sibling (memoized: the schema is static)."""
    known = _FIELD_ORDER.get(id(fields))
    if known is None or known[0] is not fields:
        order = [n for n, f in fields.items() if f.only_when is None and f.required_when is None]
        order += [n for n, f in fields.items() if f.only_when is not None or f.required_when is not None]
        known = _FIELD_ORDER[id(fields)] = (fields, order)
    return known[1]


def _normalize_object(
    fields: Mapping[str, Field],
    body: Any,
    existing: dict[str, Any] | None,
    path: str,
    internal: bool,
    top: bool = False,
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError(path, f"expected object, got {json_type(body)}")
    for key, value in body.items():
        if key in fields or value is None or (top and key in SERVER_MANAGED_FIELDS):
            continue
        raise ValidationError(join_path(path, key), "unknown field (not supported by avictl)")
    given: dict[str, Any] = {k: v for k, v in body.items() if k in fields and v is not None}
    for name, f in fields.items():
        if f.alias_for is not None and name in given:
            alias = _normalize_value(f, given.pop(name), None, join_path(path, name), internal)
            target = fields[f.alias_for]
            assert target.ref is not None
            given[f.alias_for] = name_ref(target.ref, alias)
    ordered = _field_order(fields)
    out: dict[str, Any] = {}
    for name in ordered:
        f = fields[name]
        if f.alias_for is not None:
            continue
        fpath = join_path(path, name)
        old = existing.get(name) if existing is not None else None
        value = given.get(name)
        client_may_not_set = f.read_only and not internal
        if client_may_not_set or (value is None and (f.sticky or f.write_only or f.read_only)):
            value = old
        allowed = _condition(f, "only_when", out)
        if allowed is False:
            # A value the client merely carried over (what GET returned) is dropped quietly when its
            # condition no longer holds; a value it chose is refused.
            carried = value is None or (old is not None and value == old)
            if name in given and not carried:
                sibling, values = f.only_when  # type: ignore[misc]
                raise ValidationError(fpath, f"only allowed when {sibling} is {' or '.join(values)}")
            continue
        if value is None:
            if f.required or _condition(f, "required_when", out):
                raise ValidationError(fpath, "is required")
            if not f.has_default:
                continue
            value = thaw(f.default)
        out[name] = _normalize_value(f, value, old, fpath, internal)
    for name, f in fields.items():
        for other, strict in ((f.less_than, True), (f.at_most, False)):
            if other is None or name not in out or other not in out:
                continue
            mine, theirs = out[name], out[other]
            if (strict and not mine < theirs) or (not strict and not mine <= theirs):
                relation = "less than" if strict else "at most"
                raise ValidationError(join_path(path, name), f"must be {relation} {other} ({theirs}), got {mine}")
    return {k: out[k] for k in fields if k in out}


def normalize(
    kind: str,
    body: Any,
    *,
    existing: dict[str, Any] | None = None,
    internal: bool = False,
) -> dict[str, Any]:
    """Validate a client body (POST, or PUT when ``existing`` is the stored object) and return
    the stored form with every default filled. Raises :class:`ValidationError`.

    ``internal=True`` is for the system itself: it may write read-only kinds and read-only
    fields (built-ins, service engine registration). Refs are returned as given (or as by-name
    defaults); map them with :func:`map_refs`. The VIP range of the local cloud is checked by
    :func:`check_local_vips` because only the caller knows the cloud's type.
    """
    ks = kind_schema(kind)
    if not internal:
        if ks.read_only:
            raise ValidationError("", f"{kind} objects are read-only (built-in)")
        if existing is None and not ks.creatable:
            raise ValidationError("", f"{kind} objects are created by the system, not by clients")
    try:
        return _compiled_normalizer(ks, internal)(body, existing)
    except _Fallback:
        return normalize_reference(kind, body, existing=existing, internal=internal)


def normalize_reference(
    kind: str,
    body: Any,
    *,
    existing: dict[str, Any] | None = None,
    internal: bool = False,
) -> dict[str, Any]:
    """:func:`normalize` by walking the schema: the definition the compiled normalizers must agree
    with, and what answers (and words every refusal) whenever a compiled one gives up."""
    return _normalize_object(kind_schema(kind).fields, body, existing, "", internal, top=True)


# -- compiled normalizers --------------------------------------------------------------------------
#
# normalize() runs a normalizer compiled once per (kind, internal) from the same Field definitions:
# closures with each field's checks, defaults and order fixed, instead of interpreting the schema
# per object. Contract: a compiled normalizer either returns exactly what _normalize_object returns
# (equal values, same key order, fresh containers, input untouched) or raises _Fallback, and it
# raises _Fallback whenever _normalize_object would raise. It never words an error: what it does
# not accept (every refusal, and values of unusual Python types such as str subclasses) goes to the
# reference walk, which answers or refuses exactly as before. Integers sent as text are accepted.

_Normalizer = Callable[[Any, Any], Any]  # (value, existing value or None) -> stored value


class _Fallback(Exception):
    """A compiled normalizer leaves this body to the reference walk."""


def _give_up(_value: Any, _old: Any) -> Any:
    raise _Fallback


_COMPILED: dict[tuple[str, bool], tuple[KindSchema, _Normalizer]] = {}


def _compiled_normalizer(ks: KindSchema, internal: bool) -> _Normalizer:
    known = _COMPILED.get((ks.kind, internal))
    if known is None or known[0] is not ks:
        known = _COMPILED[(ks.kind, internal)] = (ks, _compile_object(ks.fields, internal, top=True))
    return known[1]


def _compile_value(f: Field, internal: bool) -> _Normalizer:
    t = f.type
    if t == "string":
        return _compile_string(f)
    if t == "integer":
        return _compile_integer(f)
    if t == "number":
        lo, hi = f.minimum, f.maximum

        def number(value: Any, _old: Any) -> Any:
            if type(value) not in (int, float) or (lo is not None and value < lo) or (hi is not None and value > hi):
                raise _Fallback
            return value

        return number
    if t == "boolean":

        def boolean(value: Any, _old: Any) -> Any:
            if value is True or value is False:
                return value
            raise _Fallback

        return boolean
    if t == "enum":
        allowed = frozenset(f.enum)

        def enum(value: Any, _old: Any) -> Any:
            if type(value) is str and value in allowed:
                return value
            raise _Fallback

        return enum
    if t == "ref":

        def ref(value: Any, _old: Any) -> Any:
            if type(value) is str and value.strip():
                return value
            raise _Fallback

        return ref
    if t == "object":
        assert f.fields is not None
        obj = _compile_object(f.fields, internal, top=False)

        def nested(value: Any, old: Any) -> Any:
            return obj(value, old if isinstance(old, dict) else None)

        return nested
    if t == "list":
        return _compile_list(f, internal)
    return _give_up


def _compile_string(f: Field) -> _Normalizer:
    min_length = f.min_length
    ipv4 = _FORMATS[f.format][0] if f.format is not None else None
    allowed = frozenset(f.enum) if f.enum else None
    if min_length is None and ipv4 is None and allowed is None:

        def plain(value: Any, _old: Any) -> Any:
            if type(value) is str:
                return value
            raise _Fallback

        return plain

    def string(value: Any, _old: Any) -> Any:
        if (
            type(value) is not str
            or (min_length is not None and len(value.strip()) < min_length)
            or (ipv4 is not None and not ipv4(value))
            or (allowed is not None and value not in allowed)
        ):
            raise _Fallback
        return value

    return string


def _compile_integer(f: Field) -> _Normalizer:
    lo, hi = f.minimum, f.maximum
    int_text = INT_TEXT.match

    def integer(value: Any, _old: Any) -> Any:
        if type(value) is not int:  # bool is not int here: refused by the reference walk
            if (type(value) is str and int_text(value)) or (type(value) is float and value.is_integer()):
                value = int(value)
            else:
                raise _Fallback
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _Fallback
        return value

    return integer


def _compile_list(f: Field, internal: bool) -> _Normalizer:
    assert f.item is not None
    item_norm = _compile_value(f.item, internal)
    min_items, max_items, unique_by = f.min_items, f.max_items, f.unique_by
    item_fields = f.item.fields if f.item.type == "object" else None
    auto_ids = item_fields is not None and any(sub.auto_id for sub in item_fields.values())

    def normalize_list(value: Any, _old: Any) -> Any:
        if type(value) is not list:
            raise _Fallback
        n = len(value)
        if (min_items is not None and n < min_items) or (max_items is not None and n > max_items):
            raise _Fallback
        # A null item is refused by every item normalizer (None is of no field type).
        out = [item_norm(item, None) for item in value]
        if auto_ids:
            assert item_fields is not None
            _assign_auto_ids(item_fields, out)
        if unique_by is not None and n > 1:
            seen: set[Any] = set()
            for item in out:
                key = _item_key(unique_by, item)
                if key in seen:
                    raise _Fallback
                seen.add(key)
        return out

    return normalize_list


# One field of an object, in the order _normalize_object handles them:
# (name, normalizer, client may not set it, a PUT that omits it keeps the old value, required,
#  only_when, required_when, default: MISSING / normalized scalar / _THAW (normalize thaw(default))).
_Step = tuple[str, _Normalizer, bool, bool, bool, Any, Any, Any, Any]
_THAW: Any = Missing()


def _compile_object(fields: Mapping[str, Field], internal: bool, top: bool) -> _Normalizer:
    known = frozenset(fields)
    server_managed = frozenset(SERVER_MANAGED_FIELDS) if top else frozenset()
    aliases: list[tuple[str, _Normalizer, str, str]] = []
    for name, f in fields.items():
        if f.alias_for is not None:
            target_kind = fields[f.alias_for].ref
            assert target_kind is not None
            aliases.append((name, _compile_value(f, internal), f.alias_for, target_kind))
    alias_names = frozenset(name for name, *_rest in aliases)
    steps: list[_Step] = []
    for name in _field_order(fields):
        f = fields[name]
        if f.alias_for is not None:
            continue
        norm = _compile_value(f, internal)
        default: Any = MISSING
        if f.has_default:
            default = _THAW
            if type(f.default) in SCALARS and f.type not in ("object", "list"):
                try:
                    default = norm(f.default, None)  # scalars normalize to themselves or an int
                except _Fallback:
                    default = _THAW  # an invalid default: the reference walk refuses it each time
        steps.append((
            name, norm, f.read_only and not internal, f.sticky or f.write_only or f.read_only, f.required,
            f.only_when, f.required_when, default, f.default,
        ))  # fmt: skip
    bounds = [
        (name, other, strict)
        for name, f in fields.items()
        for other, strict in ((f.less_than, True), (f.at_most, False))
        if other is not None
    ]
    processed = [step[0] for step in steps]
    reorder = None if processed == [n for n in fields if n not in alias_names] else tuple(fields)

    def normalize_object(body: Any, existing: Any) -> Any:
        if type(body) is not dict:
            raise _Fallback
        if not known.issuperset(body):
            for key, value in body.items():
                if key not in known and value is not None and key not in server_managed:
                    raise _Fallback
        given = body  # read with .get only: a null counts as not given, keys outside fields are never read
        if aliases and not alias_names.isdisjoint(body):
            given = {k: v for k, v in body.items() if k in known and v is not None}
            for name, norm, target_field, target_kind in aliases:
                if name in given:
                    given[target_field] = name_ref(target_kind, norm(given.pop(name), None))
        out: dict[str, Any] = {}
        for name, norm, fixed, keeps_old, required, only_when, required_when, default, raw_default in steps:
            old = existing.get(name) if existing is not None else None
            value = given.get(name)
            if fixed or (value is None and keeps_old):
                value = old
            if only_when is not None and out.get(only_when[0]) not in only_when[1]:
                if given.get(name) is not None and not (value is None or (old is not None and value == old)):
                    raise _Fallback
                continue
            if value is None:
                if required or (required_when is not None and out.get(required_when[0]) in required_when[1]):
                    raise _Fallback
                if default is MISSING:
                    continue
                if default is not _THAW:
                    out[name] = default
                    continue
                value = thaw(raw_default)
            out[name] = norm(value, old)
        for name, other, strict in bounds:
            if name in out and other in out:
                mine, theirs = out[name], out[other]
                if (strict and not mine < theirs) or (not strict and not mine <= theirs):
                    raise _Fallback
        if reorder is not None:
            return {k: out[k] for k in reorder if k in out}
        return out

    return normalize_object


# -- local cloud VIPs ------------------------------------------------------------------------------

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_CONTROLLER = ipaddress.IPv4Address("127.0.0.1")


def check_local_vip(addr: Any, field: str = "vip[0].ip_address.addr") -> None:
    """Refuse a VIP the local cloud (CLOUD_NONE) cannot serve: it must be in 127.0.0.0/8 and not
    127.0.0.1 (which the controllers use)."""
    try:
        ip = ipaddress.IPv4Address(addr)
    except (ValueError, TypeError):
        raise ValidationError(field, f"{addr!r} is not a valid IPv4 address") from None
    if ip not in _LOOPBACK:
        raise ValidationError(field, f"{addr} is not usable on the local cloud (CLOUD_NONE): use an address in 127.0.0.0/8 such as 127.10.0.1")
    if ip == _CONTROLLER:
        raise ValidationError(field, "127.0.0.1 is reserved on the local cloud (CLOUD_NONE): use another 127.x.y.z such as 127.10.0.1")


def check_local_vips(body: dict[str, Any]) -> None:
    """:func:`check_local_vip` for every address of a (normalized) vsvip body, with its path."""
    for i, vip in enumerate(body.get("vip") or []):
        addr = get_path(vip, "ip_address.addr")
        if addr is not None:
            check_local_vip(addr, f"vip[{i}].ip_address.addr")
