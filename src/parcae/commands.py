"""The registry of `parcae` subcommands and the argument helpers the command modules share.

Each package adds its own subcommands from its own command module (a module listed in
`COMMAND_MODULES` exposing `register(subparsers)`); `parcae.cli` imports them by name from this
list. Command modules import this module, never `parcae.cli` (ARCHITECTURE §8).
"""

from __future__ import annotations

import argparse

COMMAND_MODULES = (
    "parcae.model.commands",
    "parcae.data.commands",
    "parcae.train.commands",
    "parcae.infer.commands",
    "parcae.eval.commands",
    "parcae.scaling.commands",
    "parcae.scaling.sweep_commands",
    "parcae.serve.commands",
    "parcae.export.commands",
    "parcae.quant.commands",
)

# groups of subcommands that several command modules add to: name -> (help, what a member is)
GROUPS = {"fit": ("fit scaling laws to saved results", "law")}


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """`--model` as every command that loads a trained model takes it (resolved by
    `parcae.model.hub.resolve_model_dir`)."""
    parser.add_argument(
        "--model",
        required=True,
        help="a run directory, a saved model or an official checkpoint, or a Hugging Face Hub "
        "repo org/name[@revision] (a local path wins over a Hub name)",
    )


def subcommand_group(subparsers, name: str):
    """The subparsers of `parcae NAME ...`, a group of `GROUPS` that several command modules add
    to (`parcae fit depth` from eval, `parcae fit isoflop` from scaling): the first call adds
    `parcae NAME`, whose chosen member lands in `args.<member>`; later calls return the same
    subparsers."""
    parser = subparsers.choices.get(name)
    if parser is None:
        help, member = GROUPS[name]
        parser = subparsers.add_parser(name, help=help)
        parser.group = parser.add_subparsers(dest=member, required=True, metavar=member.upper())
    return parser.group
