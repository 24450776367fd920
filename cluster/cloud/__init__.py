"""Cloud drivers: the shells that make Service Engine processes (or VMs) exist.

The leader's reconciler decides which SEs should run; a driver only makes it so. Drivers are
synchronous and return quickly (the leader calls them from a worker thread); they import no
``asyncio`` and no ``pysyncobj``. ``ensure_running`` is level-triggered: given the whole desired
set, it starts what is missing and touches nothing else, so calling it again is harmless.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

import attrs

__all__ = ["CloudDriver", "CloudError", "SE_NAME_PATTERN", "SeSpec"]

# An SE name is also a directory name on the controller host: no separators, no dot-only names.
SE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class CloudError(Exception):
    """A driver could not do what it was asked (the message says what and why)."""


def _valid_name(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not SE_NAME_PATTERN.fullmatch(value):
        raise ValueError(f"SE name {value!r} must match {SE_NAME_PATTERN.pattern}")


@attrs.frozen
class SeSpec:
    """One Service Engine the cloud should run."""

    name: str = attrs.field(validator=[attrs.validators.instance_of(str), _valid_name])
    group: str = attrs.field(validator=attrs.validators.instance_of(str))
    memory_mb: int = attrs.field(default=2048, validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)])


class CloudDriver(Protocol):
    """What the leader needs of a cloud."""

    kind: str

    def ensure_running(self, specs: Sequence[SeSpec]) -> list[str]:
        """Start every SE of ``specs`` that has no live process; return the names started."""
        ...

    def running(self) -> dict[str, int]:
        """SE name -> pid of every live SE process this driver manages."""
        ...

    def stop(self, name: str, timeout: float = 5.0) -> bool:
        """SIGTERM the SE, wait up to ``timeout``, then SIGKILL; True if it was running."""
        ...
