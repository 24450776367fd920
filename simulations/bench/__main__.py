"""``python -m simulations.bench SUBCOMMAND [options]``: avictl's benchmarks.

A subcommand is a module exposing ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status); add one by adding a line to :data:`SUBCOMMANDS`. Every
subcommand module is imported to build the parser, so keep their top-level imports light (import
pysyncobj, aiohttp or controller code inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["SUBCOMMANDS", "main"]

#: subcommand name -> module implementing it
SUBCOMMANDS: dict[str, str] = {
    "control-plane": "simulations.bench.control_plane",
    "data-plane": "simulations.bench.data_plane",
    "propagation": "simulations.bench.propagation",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
