"""The field-definition model every kind is written in: :class:`Field`, :class:`KindSchema`, the
:class:`ValidationError` a refused body raises, and the by-name ref form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs

__all__ = ["MISSING", "SERVER_MANAGED_FIELDS", "Field", "KindSchema", "Missing", "ValidationError", "name_ref"]

SERVER_MANAGED_FIELDS: tuple[str, ...] = ("uuid", "url", "_last_modified", "tenant_ref")


class Missing:
    """The type of :data:`MISSING` (a field without a default) and of other sentinels that equal no
    JSON value."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = Missing()


class ValidationError(Exception):
    """A body the API refuses (HTTP 422). ``field`` is a dotted path like ``servers[1].ratio``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@attrs.frozen(eq=False)
class Field:
    """One field of a kind or of a nested object.

    ``type`` is one of string, integer, number, boolean, enum, ref, object, list.
    ``only_when=(sibling, values)``: the field is allowed (and its default filled) only when the
    already-normalized sibling has one of ``values``. ``required_when`` has the same shape.
    ``less_than`` / ``at_most`` name a sibling this field must stay below (strictly / or equal).
    ``unique_by`` (lists): dotted sub-paths that make an item's identity ("" = the item itself).
    ``alias_for``: a ``*_name`` convenience field that sets the named ref field to
    ``/api/<target>?name=<value>``. It is never stored.
    ``auto_id`` (a string field of list items): when omitted it gets the smallest unused "1", "2", ...
    ``sticky``: when a PUT omits it, the value is taken from ``existing``.
    """

    type: str
    default: Any = MISSING
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] = ()
    fields: Mapping[str, Field] | None = None
    item: Field | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_by: tuple[str, ...] | None = None
    ref: str | None = None
    format: str | None = None
    min_length: int | None = None
    read_only: bool = False
    write_only: bool = False
    sticky: bool = False
    only_when: tuple[str, tuple[str, ...]] | None = None
    required_when: tuple[str, tuple[str, ...]] | None = None
    less_than: str | None = None
    at_most: str | None = None
    alias_for: str | None = None
    auto_id: bool = False
    title: str | None = None
    description: str = ""

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING


@attrs.frozen(eq=False)
class KindSchema:
    """One object kind. ``read_only``: clients may not write it at all (built-ins only).
    ``creatable``: clients may POST it (service engines are made by the system)."""

    kind: str
    title: str
    fields: Mapping[str, Field]
    read_only: bool = False
    creatable: bool = True
    description: str = ""


def name_ref(kind: str, name: str) -> str:
    """The by-name ref form ``/api/<kind>?name=<name>`` (name percent-encoded)."""
    return f"/api/{kind}?name={quote(name, safe='')}"
