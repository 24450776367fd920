"""The ``avictl`` subcommands, one module per area; :mod:`avictl.cli` assembles them into the root group.

Command modules never import :mod:`avictl.cli`: they reach the global options through
``_settings.client_of(ctx)``, so the root group can import them all.
"""

from __future__ import annotations

__all__: list[str] = []
