"""A trained tiny Parcae (a few dozen steps on the Shakespeare fixture) and its int8 / int4
quantizations, built once per module."""

from __future__ import annotations

import importlib.util

import pytest

from tests.train.conftest import data_dir, tiny_config  # noqa: F401  (data_dir: a fixture)

if importlib.util.find_spec("torchao") is None:  # not imported here: its import logs lines
    pytest.skip("needs the optional package torchao (parcae[quant])", allow_module_level=True)


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):  # noqa: F811
    """A run directory whose model trained for 40 steps (its final model in run/model)."""
    from parcae.train.loop import train

    run = tmp_path_factory.mktemp("run")
    train(tiny_config(data_dir, run, max_steps=40, eval_every=1000, checkpoint_every=1000))
    return run
