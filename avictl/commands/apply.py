"""``avictl apply -f FILE``: the objects of YAML files, created or updated in one transaction."""

from __future__ import annotations

from typing import Any, Iterable

import click
import yaml

from avictl import render
from avictl.client import ApiError
from avictl.commands._output import emit, note, output_option
from avictl.commands._settings import client_of
from avictl.errors import UsageFault
from avictl.objects import ALL_KINDS, READ_ONLY_KINDS, canonical_kind, prepare

__all__ = ["apply_cmd", "load_documents"]


def load_documents(streams: Iterable[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every object of every YAML stream as ``(kind, name, fields)``; all checked before any is applied."""
    out = []
    for stream in streams:
        source = getattr(stream, "name", "<input>")
        try:
            docs = list(yaml.safe_load_all(stream))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise UsageFault(f"{source}: not valid YAML{where}: {problem}") from None
        for i, doc in enumerate(docs, 1):
            if doc is None:
                continue
            label = f"{source} document {i}"
            if not isinstance(doc, dict):
                raise UsageFault(f"{label}: expected a mapping with kind and name")
            raw_kind = doc.get("kind")
            kind = canonical_kind(raw_kind) if isinstance(raw_kind, str) else None
            if kind is None:
                raise UsageFault(f"{label}: kind {raw_kind!r} is not one of {', '.join(ALL_KINDS)}")
            if kind in READ_ONLY_KINDS:
                raise UsageFault(f"{label}: {kind} objects are read-only")
            name = doc.get("name")
            if not isinstance(name, str) or not name:
                raise UsageFault(f"{label}: name must be a non-empty string")
            fields = {k: v for k, v in doc.items() if k != "kind"}
            out.append((kind, name, prepare(kind, fields)))
    return out


@click.command("apply")
@click.option("-f", "--filename", "files", multiple=True, required=True, type=click.File("r"),
              help="A YAML file ('-' for stdin); repeatable.")
@click.option("--dry-run", is_flag=True, help="Check everything on the server and show what would change; write nothing.")
@output_option
@click.pass_context
def apply_cmd(ctx: click.Context, files: tuple[Any, ...], dry_run: bool, fmt: str) -> None:
    """Create or update the objects of YAML files: all of them, or none.

    \b
    Each YAML document is one object in the API's wire format, with its kind beside its fields:
      kind: pool            # or an alias: vs, hm, segroup
      name: web-pool
      lb_algorithm: round_robin        # CLI aliases are expanded
      servers: [{ip: {addr: 127.0.0.1, type: V4}, port: 9001}]
      health_monitor_refs: [System-TCP] # refs may be bare names
    Separate objects with '---'; an object may refer to one made earlier in the same files.

    Every document goes to the cluster in one transaction (PUT /api/macro): an absent object is
    created; a present one gets the fields the document names laid over its stored fields (fields
    the document leaves out are kept) and is updated only if that changes it, so re-applying an
    unchanged file writes nothing. One refused document refuses them all, and the error names it.
    --dry-run runs the same checks on the server, commits nothing, and shows each change.
    Prints 'created|updated|unchanged KIND NAME'.
    """
    documents = load_documents(files)
    if not documents:
        note("nothing to apply: the files hold no object")
        return
    client = client_of(ctx)
    data = [{"model_name": kind, **desired} for kind, _name, desired in documents]
    try:
        answer = client.request("PUT", "/api/macro", {"data": data}, query={"dry_run": "true"} if dry_run else None)
    except ApiError as exc:
        raise _located(exc, documents) from None
    results = (answer or {}).get("results") or []
    if fmt != "table":
        emit(render.dump(results, fmt))
        return
    suffix = " (dry run)" if dry_run else ""
    lines = []
    for result in results:
        lines.append(f"{result['action']} {result['kind']} {render.printable(str(result['name']))}" + (suffix if result["action"] != "unchanged" else ""))
        if dry_run:
            for field, change in (result.get("changes") or {}).items():
                lines.append(f"    {field}: {render.inline(change.get('from'))} -> {render.inline(change.get('to'))}")
    emit("\n".join(lines))


def _located(exc: ApiError, documents: list[tuple[str, str, dict[str, Any]]]) -> ApiError:
    """The server names a refused field by its place in the transaction (``data[3].services[0].port``):
    say which document that is."""
    import re

    match = re.match(r"^data\[(\d+)\]\.?(.*)$", exc.field or "")
    if match is None or int(match.group(1)) >= len(documents):
        return exc
    kind, name, _ = documents[int(match.group(1))]
    return ApiError(exc.status, f"{kind} {name}: {exc.message}; nothing was applied", code=exc.code,
                    field=match.group(2) or None, command_id=exc.command_id)
