"""The object kinds of the REST API, written as data, and the pure functions that check bodies.

The wire format is the real Avi / NSX Advanced Load Balancer JSON: its field names, enums and
``*_ref`` strings. avictl implements a subset of the fields. A client that sends a field outside
that subset gets a :class:`ValidationError` naming it. The field is never silently dropped.

Everything here is pure. Nothing does I/O, reads the clock or parses URLs. How a ref is written
(URL, ``/api/<kind>/<uuid>``, ``/api/<kind>?name=<name>``) is the caller's concern: it turns refs
into its stored form with :func:`map_refs` after :func:`normalize`, and back into URLs on output.

Contracts the caller relies on
------------------------------
* ``normalize(kind, body)`` (POST) and ``normalize(kind, body, existing=stored)`` (PUT) return
  the stored form: every implemented field with its default filled in, in schema order.
  - The server-managed fields :data:`SERVER_MANAGED_FIELDS` (``uuid``, ``url``, ``_last_modified``,
    ``tenant_ref``) are accepted on input and never appear in the output. The caller keeps them in
    its own record (tenant from ``X-Avi-Tenant``, ``_last_modified`` read from the raw body).
  - A field sent as JSON ``null`` counts as not given, at every depth. This covers unknown fields
    too, because the SDK sends ``None`` for optional arguments it leaves unset.
  - Default refs are written by name (``/api/serviceenginegroup?name=Default-Group``), a form
    every ref resolver must accept. Mapping refs after normalizing makes them canonical.
  - Integers may arrive as decimal strings (``"port": "8080"``). The protobuf JSON mapping that
    the real product uses accepts this, and avisdk's samples send it. Stored as ints.
  - PUT replaces the whole object, and an omitted field goes back to its default. There are
    these exceptions (all taken from ``existing``):
    ``name`` when omitted; write-only fields when omitted, so that a GET-modify-PUT of a
    redacted body keeps the password; and read-only fields, whose client values are ignored.
* :func:`normalize` of its own output is the identity (``normalize(normalize(x)) ==
  normalize(x)``, and the same with ``existing=``). Property tests check this.
* Write-only fields are stored and must be removed from responses with :func:`redact`.

Modules
-------
* :mod:`~cluster.schema.fields`: the field-definition model (:class:`Field`, :class:`KindSchema`),
  :class:`ValidationError` and the by-name ref form :func:`name_ref`.
* :mod:`~cluster.schema.kinds`: every kind as data, written in a small DSL, and :data:`KINDS`.
* :mod:`~cluster.schema.normalizers`: :func:`normalize` (normalizers compiled per kind, with the
  schema walk :func:`normalize_reference` as their reference) and the local cloud's VIP checks.
* :mod:`~cluster.schema.refs`: refs found, rewritten and mapped (:func:`ref_fields`,
  :func:`rewrite_refs`, :func:`map_refs`), :func:`check_unique_refs`, :func:`redact` and
  :func:`without_defaults`.
* :mod:`~cluster.schema.patch`: :func:`apply_patch`.
* :mod:`~cluster.schema.builtin_objects`: :data:`BUILTINS`.

The OpenAPI schemas of the kinds are generated in :mod:`cluster.api.openapi`; the CLI's
shorthands for kinds and values live in :mod:`avictl.aliases`.
"""

from __future__ import annotations

from cluster.schema._values import INT_TEXT, thaw
from cluster.schema.builtin_objects import BUILTINS
from cluster.schema.fields import (
    SERVER_MANAGED_FIELDS,
    Field,
    KindSchema,
    ValidationError,
    name_ref,
)
from cluster.schema.kinds import (
    APPLICATION_PROFILES,
    HA_MODES,
    HTTP_RESPONSE_CODES,
    KINDS,
    LB_ALGORITHMS,
    MONITOR_TYPES,
    PRIVILEGES,
    REBALANCE_CRITERIA,
    SE_STATES,
)
from cluster.schema.normalizers import (
    check_local_vip,
    check_local_vips,
    normalize,
    normalize_reference,
)
from cluster.schema.patch import PATCH_OPERATIONS, apply_patch
from cluster.schema.refs import (
    check_unique_refs,
    map_refs,
    redact,
    ref_fields,
    rewrite_refs,
    without_defaults,
)
from cluster.schema.secrets import seal_write_only

__all__ = [
    "APPLICATION_PROFILES",
    "BUILTINS",
    "HA_MODES",
    "HTTP_RESPONSE_CODES",
    "INT_TEXT",
    "KINDS",
    "LB_ALGORITHMS",
    "MONITOR_TYPES",
    "PATCH_OPERATIONS",
    "PRIVILEGES",
    "REBALANCE_CRITERIA",
    "SERVER_MANAGED_FIELDS",
    "SE_STATES",
    "Field",
    "KindSchema",
    "ValidationError",
    "apply_patch",
    "check_local_vip",
    "check_local_vips",
    "check_unique_refs",
    "map_refs",
    "name_ref",
    "normalize",
    "normalize_reference",
    "redact",
    "ref_fields",
    "rewrite_refs",
    "seal_write_only",
    "thaw",
    "without_defaults",
]
