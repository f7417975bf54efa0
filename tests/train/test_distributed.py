import subprocess
import sys

import pytest

from parcae.train.loop import train
from parcae.train.metrics import read_metrics

from .conftest import tiny_config


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def test_two_processes_match_one_with_the_same_global_batch(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path / "ddp", max_steps=3, eval_every=100,
                         checkpoint_every=100)
    config.save(tmp_path / "run.yaml")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "parcae", "train", str(tmp_path / "run.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    single = tiny_config(data_dir, tmp_path / "single", max_steps=3, eval_every=100,
                         checkpoint_every=100)
    train(single)
    two, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "single")
    assert two.keys() == one.keys() == {1, 2, 3}
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-4)
