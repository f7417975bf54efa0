"""The `parcae` command line: a thin dispatcher.

Each capability registers its own subcommands from its own package (a module listed in
`parcae.commands.COMMAND_MODULES` exposing `register(subparsers)`); this file only wires them
together and turns `ParcaeError` into one line on stderr with exit code 2. A usage error (an
unknown option, a missing argument) is one line with exit code 2 as well, pointing at `--help`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from parcae import commands
from parcae.errors import ParcaeError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), not the usage text;
    subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="parcae", description="Stable looped language models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in commands.COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ParcaeError as error:
        print(f"parcae: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the system refuses (/proc, a full disk): one line too
        where = f"{error.filename}: " if error.filename else ""
        print(f"parcae: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parcae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
