"""`parcae.commands`: the registry of command modules and the groups they share."""

from __future__ import annotations

import argparse
import importlib

import pytest

from parcae.cli import build_parser
from parcae.commands import COMMAND_MODULES, GROUPS, subcommand_group


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


@pytest.mark.parametrize("module_name", COMMAND_MODULES)
def test_every_registered_module_adds_its_own_subcommands(module_name):
    parser = argparse.ArgumentParser()
    importlib.import_module(module_name).register(parser.add_subparsers())
    assert _subcommands(parser)


def test_several_modules_add_to_one_group_of_subcommands():
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    subcommand_group(subparsers, "fit").add_parser("depth").set_defaults(func="depth")
    subcommand_group(subparsers, "fit").add_parser("isoflop").set_defaults(func="isoflop")
    assert list(_subcommands(parser)) == ["fit"]
    args = parser.parse_args(["fit", "isoflop"])
    assert (args.command, args.law, args.func) == ("fit", "isoflop", "isoflop")
    assert GROUPS["fit"][1] == "law"


def test_parcae_fit_holds_the_laws_of_eval_and_scaling():
    fit = _subcommands(build_parser())["fit"]
    assert list(_subcommands(fit)) == ["depth", "isoflop"]
