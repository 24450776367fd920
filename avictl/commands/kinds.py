"""One command group per kind (``pool``, ``vs``, ...): list, show, create, update, delete."""

from __future__ import annotations

from typing import Any

import click

from avictl import render
from avictl.client import ApiError, Client
from avictl.commands._crud import Effects, create_object, delete_object, find_or_fail, update_object
from avictl.commands._kind_flags import flags_of
from avictl.commands._output import emit, note, output_option
from avictl.commands._settings import client_of
from avictl.errors import UsageFault
from avictl.objects import LIMITED_KINDS, parse_fields, prepare

__all__ = ["FIELD_HELP", "KIND_HELP", "make_kind_group"]


KIND_HELP = {
    "pool": "Pools of backend servers.",
    "healthmonitor": "Health monitors (alias: hm).",
    "vsvip": "Virtual IPs.",
    "serviceenginegroup": "Service Engine groups (alias: segroup).",
    "virtualservice": "Virtual services (alias: vs).",
    "cloud": "Clouds.",
    "tenant": "Tenants.",
    "serviceengine": "Service Engines (made by the system; alias: se).",
    "applicationprofile": "Application profiles: HTTP (with http_profile's request limits) or L4 (alias: appprofile).",
}

FIELD_HELP = ("A field as KEY=VALUE (repeatable). VALUE is JSON when it parses (80, true, [..], {..}), else a string "
              "(quote it as JSON to force a string: 'description=\"80\"'); a.b=v sets a nested field; "
              "a *_ref given a bare name refers by name.")


def _body_from(kind: str, client: Client, name: str, creating: bool, fields: tuple[str, ...], flags: dict[str, Any],
               effects: Effects) -> dict[str, Any]:
    from_fields = parse_fields(fields)  # parse first: a typo must not leave a half-made vsvip behind
    _options, to_fields = flags_of(kind)
    body = to_fields(client, name, creating, effects, **flags)
    body.update(prepare(kind, from_fields))
    return body


def make_kind_group(kind: str) -> click.Group:
    """The command group of ``kind``, with the verbs the kind allows (:data:`~avictl.objects.LIMITED_KINDS`)."""
    verbs = LIMITED_KINDS.get(kind, ("list", "show", "create", "update", "delete"))

    @click.group(name=kind, help=KIND_HELP.get(kind))
    def group() -> None:
        pass

    @group.command("list")
    @output_option
    @click.pass_context
    def list_cmd(ctx: click.Context, fmt: str) -> None:
        """List every object of this kind."""
        emit(render.render_objects(kind, client_of(ctx).list_all(kind), fmt))

    @group.command("show")
    @click.argument("name")
    @output_option
    @click.pass_context
    def show_cmd(ctx: click.Context, name: str, fmt: str) -> None:
        """Show one object by name."""
        emit(render.render_object(kind, find_or_fail(client_of(ctx), kind, name), fmt))

    options, _fields = flags_of(kind)

    @click.command("create")
    @click.argument("name")
    @click.option("--field", "fields", multiple=True, metavar="KEY=VALUE", help=FIELD_HELP)
    @options
    @output_option
    @click.pass_context
    def create_cmd(ctx: click.Context, name: str, fields: tuple[str, ...], fmt: str, **flags: Any) -> None:
        """Create an object named NAME."""
        client = client_of(ctx)
        effects = Effects()
        body = {**_body_from(kind, client, name, True, fields, flags, effects), "name": name}
        try:
            obj = create_object(client, kind, body)
        except ApiError:
            effects.rollback()  # do not leave the vsvip made for a refused vs behind
            raise
        for line in effects.notes:
            note(line)
        emit(render.render_objects(kind, [obj], fmt) if fmt == "table" else render.dump(obj, fmt))

    @click.command("update")
    @click.argument("name")
    @click.option("--field", "fields", multiple=True, metavar="KEY=VALUE", help=FIELD_HELP)
    @options
    @output_option
    @click.pass_context
    def update_cmd(ctx: click.Context, name: str, fields: tuple[str, ...], fmt: str, **flags: Any) -> None:
        """Change fields of NAME (read, merge, write back with _last_modified)."""
        client = client_of(ctx)
        effects = Effects()
        desired = _body_from(kind, client, name, False, fields, flags, effects)
        for line in effects.notes:
            note(line)
        if not desired:
            raise UsageFault("nothing to update: give --field KEY=VALUE or a flag")
        action, obj, _changed = update_object(client, kind, name, desired)
        if action == "unchanged":
            note(f"{kind} {name} unchanged")
        emit(render.render_objects(kind, [obj], fmt) if fmt == "table" else render.dump(obj, fmt))

    @click.command("delete")
    @click.argument("name")
    @output_option
    @click.pass_context
    def delete_cmd(ctx: click.Context, name: str, fmt: str) -> None:
        """Delete NAME (a virtual service's own <vs>-vsvip goes with it)."""
        client = client_of(ctx)
        obj = find_or_fail(client, kind, name)
        delete_object(client, kind, obj)
        deleted = [{"action": "deleted", "kind": kind, "name": name, "uuid": obj.get("uuid")}]
        vsvip_name = render.ref_name(obj.get("vsvip_ref")) if kind == "virtualservice" else None
        if vsvip_name == f"{name}-vsvip":
            vsvip = client.find("vsvip", vsvip_name)
            if vsvip is not None:
                try:
                    delete_object(client, "vsvip", vsvip)
                    deleted.append({"action": "deleted", "kind": "vsvip", "name": vsvip_name, "uuid": vsvip.get("uuid")})
                except ApiError as exc:
                    note(f"kept vsvip {vsvip_name}: {exc}")
        emit(render.render_apply(deleted, fmt))

    for command in (create_cmd, update_cmd, delete_cmd):
        if command.name in verbs:
            group.add_command(command)
    return group
