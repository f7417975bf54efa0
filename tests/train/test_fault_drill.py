"""Fault drill: a run killed with kill -9 at three seeded random points (one of them halfway
through writing a checkpoint), resumed each time, then its newest checkpoint corrupted on disk
and resumed once more, ends with exactly the records of a run that was never interrupted."""

from __future__ import annotations

import random
import signal
import subprocess
import sys

from parcae.cli import main
from parcae.train.checkpoint import hash_path, list_checkpoints
from parcae.train.loop import train
from parcae.train.metrics import read_metrics

from .conftest import tiny_config
from .test_checkpoint_integrity import corrupt_middle

STEPS, EVERY, SEED = 12, 2, 20261130

# kill -9 itself after the backward pass of step index N ("step"), or once the checkpoint of
# step N is in place but before its hash ("save": an unfinished save)
KILLER = """
import os, signal, sys
from parcae.train import checkpoint
from parcae.train.config import load_config
from parcae.train.loop import train

where, at = sys.argv[2], int(sys.argv[3])
hash_file = checkpoint.file_sha256

def kill_at_step(model, step):
    if where == "step" and step == at:
        os.kill(os.getpid(), signal.SIGKILL)

def kill_before_the_hash(path):
    if where == "save" and path.name == f"step_{at:07d}.pt":
        os.kill(os.getpid(), signal.SIGKILL)
    return hash_file(path)

checkpoint.file_sha256 = kill_before_the_hash
train(load_config(sys.argv[1]), after_backward=kill_at_step)
"""


def _records(run_dir) -> list[tuple]:
    """What the run logged, in order: (kind, step, loss or validation losses)."""
    return [
        (r["kind"], r["step"], r["loss"] if r["kind"] == "train" else r["val_loss"])
        for r in read_metrics(run_dir)
    ]


def _kill(config_path, where: str, at: int) -> str:
    died = subprocess.run(
        [sys.executable, "-c", KILLER, str(config_path), where, str(at)],
        capture_output=True,
        text=True,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    return died.stderr


def test_kill_9_three_times_and_a_corrupted_checkpoint_leave_the_losses_unchanged(
    data_dir, tmp_path, capsys
):
    reference = tmp_path / "reference"
    train(tiny_config(data_dir, reference, max_steps=STEPS, checkpoint_every=EVERY))
    run, config = tmp_path / "run", tmp_path / "run.yaml"
    tiny_config(data_dir, run, max_steps=STEPS, checkpoint_every=EVERY, resume=True).save(config)

    first, second, third = sorted(random.Random(SEED).sample(range(1, STEPS - 1), 3))
    unfinished = (second // EVERY + 1) * EVERY  # the first checkpoint after `second` steps
    _kill(config, "step", first)
    _kill(config, "save", unfinished)
    half_saved = list_checkpoints(run)[-1]
    assert half_saved.name == f"step_{unfinished:07d}.pt" and not hash_path(half_saved).exists()
    err = _kill(config, "step", third)
    assert f"skipping checkpoint {half_saved}: no .sha256 (an unfinished" in err

    *_, older, newest = list_checkpoints(run)
    assert hash_path(newest).exists() and hash_path(older).exists()
    corrupt_middle(newest)
    capsys.readouterr()
    assert main(["train", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"parcae: skipping checkpoint {newest}: hash mismatch; falling back" in err
    step = int(older.stem.removeprefix("step_"))
    assert (
        f"parcae: resumed from {older} at step {step} (skipped newer {newest.name}: hash mismatch)"
    ) in err
    assert _records(run) == _records(reference)
