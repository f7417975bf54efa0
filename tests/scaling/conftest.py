"""Fixtures: the tiny prepared dataset of tests/train and a writer of tiny sweep files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.train.conftest import TINY_MODEL, TINY_RUN, data_dir  # noqa: F401 (data_dir: a fixture)

# The run of tests/train/conftest.py's tiny_config (64 wide, 4 x 32 tokens a step): a step is
# about 0.9 MFLOPs/token x 128 tokens, so a budget of 4e8 buys 3 steps at μ_rec 1 and 2.
TINY_OVERRIDES = TINY_RUN
TINY_GRID = dict(flops_budget=[4e8, 8e8], mean_recurrence=[1, 2], seed=[0])


@pytest.fixture
def write_sweep(data_dir, tmp_path):  # noqa: F811 (the fixture imported above)
    """`write_sweep(name, grid=TINY_GRID, **extra)`: a tiny sweep file in tmp_path whose table
    goes to tmp_path/name; `extra` adds or replaces sweep keys."""

    def write(name: str = "sweep", grid: dict | None = None, **extra) -> Path:
        path = tmp_path / f"{name}.yaml"
        sweep = dict(
            overrides=dict(TINY_OVERRIDES, data=str(data_dir)),
            grid=grid or TINY_GRID,
            out_dir=str(tmp_path / name),
        )
        sweep.update(extra)
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))
        return path

    return write
