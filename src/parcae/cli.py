"""The `parcae` command line: a thin dispatcher.

Each capability registers its own subcommands from its own package (a module listed in
`COMMAND_MODULES` exposing `register(subparsers)`); this file only wires them together and turns
`ParcaeError` into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from parcae.errors import ParcaeError

COMMAND_MODULES = (
    "parcae.model.commands",
    "parcae.data.commands",
    "parcae.train.commands",
    "parcae.infer.commands",
    "parcae.eval.commands",
    "parcae.scaling.commands",
    "parcae.scaling.sweep_commands",
    "parcae.reproduce.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parcae", description="Stable looped language models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ParcaeError as error:
        print(f"parcae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parcae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
