"""Envelope codec: frozen attrs classes <-> msgpack bytes through a tag registry.

Every encoded value is ``[tag, version, {field: value}]``. A class is registered under a stable
tag and a version; decoding an older version runs the registered upcasters in order until the
current version is reached. The tag, never the Python class name, is what the log means, so a
class may be renamed freely. Nothing here ever pickles.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import attrs
import msgpack

__all__ = [
    "DecodeError",
    "decode",
    "current_fields",
    "decode_value",
    "envelope_of",
    "is_current",
    "pack",
    "unpack",
    "encode",
    "encode_value",
    "registered",
    "tag_of",
    "upcaster",
]

T = TypeVar("T")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_classes: dict[str, tuple[type, int]] = {}
_tags: dict[type, tuple[str, int]] = {}
_upcasters: dict[tuple[str, int], Upcaster] = {}

# A msgpack message larger than this is refused before it is decoded (bounds memory on bad input).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class DecodeError(ValueError):
    """Bytes that are not a valid envelope of a registered tag and version."""


def registered(tag: str, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Class decorator: register an attrs class under ``tag`` at ``version``."""

    def register(cls: type[T]) -> type[T]:
        if not attrs.has(cls):
            raise TypeError(f"{cls.__name__} must be an attrs class")
        if tag in _classes and _classes[tag][0] is not cls:
            raise ValueError(f"tag {tag!r} is already registered to {_classes[tag][0].__name__}")
        _classes[tag] = (cls, version)
        _tags[cls] = (tag, version)
        return cls  # type: ignore[return-value]  # attrs.has narrows cls to AttrsInstance; it is still T

    return register


def upcaster(tag: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function turning the fields of ``tag`` at ``from_version`` into ``from_version + 1``."""

    def register(fn: Upcaster) -> Upcaster:
        _upcasters[(tag, from_version)] = fn
        return fn

    return register


def tag_of(cls_or_obj: Any) -> str:
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    return _tags[cls][0]


def encode_value(obj: Any) -> list[Any]:
    """The envelope of one registered object, as plain msgpack-able data."""
    cls = type(obj)
    try:
        tag, version = _tags[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not registered with the codec") from None
    names = _field_names.get(cls)
    if names is None:
        names = _field_names[cls] = tuple(field.name for field in attrs.fields(cls))
    return [tag, version, {name: _plain(getattr(obj, name)) for name in names}]


_field_names: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset((str, int, float, bool, bytes, type(None)))


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if type(value) in _tags:
        return encode_value(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode_value(envelope: Any) -> Any:
    """Inverse of :func:`encode_value`, upcasting old versions."""
    if type(envelope) is list and len(envelope) == 3:
        tag, version, fields = envelope
        known = _classes.get(tag) if type(tag) is str else None
        if known is not None and type(version) is int and version == known[1] and type(fields) is dict:
            # A current envelope, the common case: what the general path below does for it.
            try:
                return known[0](**fields)
            except (TypeError, ValueError) as exc:
                raise DecodeError(f"bad fields for {tag}: {exc}") from None
    return _decode_any(envelope)


def _decode_any(envelope: Any) -> Any:
    if not (isinstance(envelope, (list, tuple)) and len(envelope) == 3):
        raise DecodeError("an envelope is [tag, version, fields]")
    tag, version, fields = envelope
    if not isinstance(tag, str) or not isinstance(version, int) or not isinstance(fields, dict):
        raise DecodeError("an envelope is [tag: str, version: int, fields: map]")
    try:
        cls, current = _classes[tag]
    except KeyError:
        raise DecodeError(f"unknown tag {tag!r}") from None
    if version > current:
        raise DecodeError(f"{tag} version {version} is newer than this code knows ({current})")
    while version < current:
        try:
            fields = _upcasters[(tag, version)](dict(fields))
        except KeyError:
            raise DecodeError(f"no upcaster for {tag} from version {version}") from None
        version += 1
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"bad fields for {tag}: {exc}") from None


def encode(obj: Any) -> bytes:
    return msgpack.packb(encode_value(obj), use_bin_type=True)


def unpack(data: bytes) -> Any:
    """The plain envelope in ``data`` (not yet turned into objects); DecodeError when not msgpack."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    # TypeError: a map key msgpack cannot hash (a map or an array as a key, e.g. b'\x81\x80\x00').
    except (TypeError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"not msgpack: {exc}") from None


def decode(data: bytes) -> Any:
    return decode_value(unpack(data))


def current_fields(envelope: Any, cls: type) -> dict[str, Any] | None:
    """The fields of a plain envelope of ``cls`` at its current version; None for anything else
    (another tag, an older version that decoding would upcast)."""
    tag, version = _tags[cls]
    if isinstance(envelope, list) and len(envelope) == 3 and envelope[0] == tag and envelope[1] == version and isinstance(envelope[2], dict):
        return envelope[2]
    return None


def is_current(envelope: Any) -> bool:
    """A plain envelope of a registered tag at its current version (decoding would not upcast it)."""
    if not (isinstance(envelope, list) and len(envelope) == 3 and isinstance(envelope[2], dict)):
        return False
    known = _classes.get(envelope[0]) if isinstance(envelope[0], str) else None
    return known is not None and envelope[1] == known[1]


def envelope_of(cls: type, fields: dict[str, Any]) -> list[Any]:
    """A plain envelope of ``cls`` from already plain ``fields`` (in the class's field order), for
    re-framing decoded parts without turning them into objects and back."""
    tag, version = _tags[cls]
    return [tag, version, fields]


def pack(envelope: list[Any]) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True)
