"""The studies run in quick mode (a few steps, fewer runs) on a 64-wide model and the tiny
corpus, once per session: the runner's and the report's tests read what they recorded."""

from __future__ import annotations

import pytest

from experiments.run import Workspace, run_study
from tests.train.conftest import TINY_RUN, data_dir  # noqa: F401 (a fixture)


@pytest.fixture(scope="session")
def quick(data_dir, tmp_path_factory) -> Workspace:  # noqa: F811 (the fixture imported above)
    root = tmp_path_factory.mktemp("experiments")
    overrides = dict(
        TINY_RUN, model_overrides=dict(d_model=64, ffn_dim=128, n_heads=2), data=str(data_dir)
    )
    overrides.pop("lr"), overrides.pop("adam_lr")  # the studies set them
    workspace = Workspace(
        root / "runs", root / "results", quick=True, overrides=overrides, say=lambda _: None
    )
    for study in ("S1", "S2", "S3", "S4"):
        run_study(study, workspace)
    return workspace
