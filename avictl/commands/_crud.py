"""Object reads and writes the commands share: find by name, create with a client-chosen uuid,
update by read-merge-write with ``_last_modified``, delete; retries that already took effect are successes."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any, Callable, Optional

import attrs

from avictl.client import ApiError, Client
from avictl.errors import Refused
from avictl.objects import differences, merge

__all__ = ["UPDATE_ATTEMPTS", "Effects", "create_object", "delete_object", "find_or_fail", "put_merged", "update_object"]

UPDATE_ATTEMPTS = 3


def find_or_fail(client: Client, kind: str, name: str) -> dict[str, Any]:
    """The object ``kind`` named ``name``; refused when there is none."""
    obj = client.find(kind, name)
    if obj is None:
        raise Refused(f"{kind} {name!r} does not exist")
    return obj


def create_object(client: Client, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST with a client-chosen uuid (``Slug``), so a retry that finds the object made is a success."""
    slug = f"{kind}-{uuidlib.uuid4()}"
    try:
        return dict(client.post(f"/api/{kind}", body, headers={"Slug": slug}) or {})
    except ApiError as exc:
        if exc.status == 409 and client.last_attempts > 1:
            existing = client.find(kind, str(body.get("name")))
            if existing is not None and existing.get("uuid") == slug:
                return existing
        raise


def update_object(
    client: Client, kind: str, name: str, desired: dict[str, Any], stored: Optional[dict[str, Any]] = None
) -> tuple[str, dict[str, Any], list[str]]:
    """GET, merge ``desired``, PUT with ``_last_modified``; on 412 re-read, re-merge and retry.

    Returns (``"updated"`` | ``"unchanged"``, the object, the fields that differed).
    """
    changed: list[str] = []
    for attempt in range(UPDATE_ATTEMPTS):
        if stored is None:
            stored = find_or_fail(client, kind, name)
        now_changed = differences(desired, stored, kind)
        if not now_changed:
            # After a 412 this can be our own earlier attempt, applied before its answer was lost.
            return ("updated" if changed else "unchanged"), stored, changed
        changed = now_changed
        try:
            action, obj = put_merged(client, kind, stored, desired)
            return action, obj, changed
        except ApiError as exc:
            if exc.status != 412 or attempt == UPDATE_ATTEMPTS - 1:
                raise
        stored = None
    raise AssertionError("unreachable")


def put_merged(client: Client, kind: str, stored: dict[str, Any], desired: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """PUT ``stored`` merged with ``desired``; ``"unchanged"`` when the server made no event of it.

    The server answers an identical body without a new revision, so ``_last_modified`` tells
    whether the write changed anything (a write-only field cannot be compared client-side).
    """
    body = merge(stored, desired)
    body["_last_modified"] = stored.get("_last_modified")
    obj = dict(client.put(f"/api/{kind}/{stored['uuid']}", body) or {})
    changed = obj.get("_last_modified") != stored.get("_last_modified")
    return ("updated" if changed else "unchanged"), obj


def delete_object(client: Client, kind: str, obj: dict[str, Any]) -> None:
    """DELETE ``obj``; a 404 after a retry means an earlier attempt deleted it."""
    try:
        client.delete(f"/api/{kind}/{obj['uuid']}")
    except ApiError as exc:
        if not (exc.status == 404 and client.last_attempts > 1):  # a retry found it already deleted
            raise


@attrs.define
class Effects:
    """What building a body did besides computing fields (``vs --vip`` makes a vsvip)."""

    undo: list[Callable[[], Any]] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    def rollback(self) -> None:
        for step in reversed(self.undo):
            try:
                step()
            except ApiError:
                pass
