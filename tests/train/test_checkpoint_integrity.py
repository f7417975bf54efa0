"""Checkpoint integrity: loaded as tensors only, hashed and verified, a bad newest checkpoint
skipped for an older good one, one-line refusals when none is usable, when the budget is spent
or when a save cannot be written, and earlier checkpoints never touched."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from parcae import outputs
from parcae.cli import main
from parcae.errors import TrainingError
from parcae.train.checkpoint import (
    checkpoint_dir,
    hash_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from parcae.train.loop import train
from parcae.train.metrics import read_metrics
from tests.bad_input import refuse

from .conftest import tiny_config

STEPS = 8


def _train_records(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["kind"] == "train"]


def _files(run_dir) -> set[str]:
    return {p.name for p in checkpoint_dir(run_dir).iterdir()}


def corrupt_middle(path) -> None:
    """Overwrite 4 KB in the middle of `path` with plausible float32 weights."""
    noise = np.random.default_rng(0).normal(0, 0.02, 1024).astype(np.float32).tobytes()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + len(noise)] = noise
    path.write_bytes(bytes(data))


def _write_hash(path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    hash_path(path).write_text(f"{digest}  {path.name}\n")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run of STEPS steps."""
    out = tmp_path_factory.mktemp("reference")
    train(tiny_config(data_dir, out, max_steps=STEPS))
    return out


@pytest.fixture(scope="module")
def stopped(data_dir, tmp_path_factory):
    """The same run stopped by SIGTERM after step 6: checkpoints at steps 4 and 6."""
    out = tmp_path_factory.mktemp("stopped") / "run"

    def terminate(model, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(tiny_config(data_dir, out, max_steps=STEPS), after_backward=terminate).steps == 6
    return out


@pytest.fixture
def run(stopped, tmp_path):
    """A copy of the stopped run to resume or damage."""
    shutil.copytree(stopped, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished run of 2 steps (a checkpoint at step 2 and an exported model)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(data_dir, out, max_steps=2))
    return out


def _argv(data_dir, run_dir, tmp_path, *overrides: str) -> list[str]:
    config = tmp_path / "resume.yaml"
    tiny_config(data_dir, run_dir, max_steps=STEPS, resume=True).save(config)
    return ["train", str(config), *overrides]


def test_checkpoints_hold_only_tensors_and_plain_values_and_a_sha256sum_hash(stopped):
    assert _files(stopped) == {
        "step_0000004.pt",
        "step_0000004.pt.sha256",
        "step_0000006.pt",
        "step_0000006.pt.sha256",
    }
    check = subprocess.run(
        ["sha256sum", "-c", "step_0000004.pt.sha256", "step_0000006.pt.sha256"],
        cwd=checkpoint_dir(stopped),
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.count(": OK") == 2, check.stdout
    state = torch.load(checkpoint_dir(stopped) / "step_0000006.pt", weights_only=True)
    assert state["step"] == 6 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_the_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    torch.save(rng_state(), tmp_path / "rng.pt")

    def draw():
        return random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()

    first = draw()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == first


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("overwrite", "hash mismatch"),
        ("truncate", "hash mismatch"),
        ("no hash", "no .sha256 (an unfinished or unverified save)"),
        ("truncate and rehash", "unreadable (PytorchStreamReader"),
    ],
)
def test_a_bad_newest_checkpoint_falls_back_to_the_older_one_with_the_same_losses(
    data_dir, reference, run, capsys, damage, reason
):
    newest = checkpoint_dir(run) / "step_0000006.pt"
    if damage == "overwrite":
        corrupt_middle(newest)
    elif damage == "no hash":
        hash_path(newest).unlink()
    else:
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        if damage == "truncate and rehash":
            _write_hash(newest)
    damaged = {name: (checkpoint_dir(run) / name).read_bytes() for name in _files(run)}
    seen = []

    def still_there(model, step):  # a resume never deletes or rewrites a bad checkpoint
        if step == 4:
            seen.extend((checkpoint_dir(run) / name).read_bytes() for name in damaged)

    result = train(tiny_config(data_dir, run, max_steps=STEPS, resume=True), still_there)
    assert result.steps == STEPS and seen == list(damaged.values())
    err = capsys.readouterr().err
    assert f"parcae: skipping checkpoint {newest}: {reason}" in err
    assert (
        f"parcae: resumed from {checkpoint_dir(run) / 'step_0000004.pt'} at step 4 "
        f"(skipped newer step_0000006.pt: {reason}"
    ) in err
    assert _train_records(run) == _train_records(reference)
    assert load_checkpoint(newest)["step"] == 6  # saved again when training reached step 6


def test_no_usable_checkpoint_is_refused_until_the_user_trusts_one(
    data_dir, reference, run, tmp_path, capsys
):
    for name in ("step_0000004.pt", "step_0000006.pt"):  # e.g. a save cut short
        hash_path(checkpoint_dir(run) / name).unlink()
    line = refuse(_argv(data_dir, run, tmp_path), capsys, protect=[run])
    assert line == (
        f"parcae: error: no usable checkpoint in {checkpoint_dir(run)} (the newest, "
        "step_0000006.pt: no .sha256 (an unfinished or unverified save); 1 older one unusable "
        "too); if you wrote step_0000006.pt yourself (an older parcae, or a save cut short), "
        f"trust and convert it with `parcae upgrade-checkpoints {run}` and resume again"
    )
    command = "sha256sum step_0000006.pt > step_0000006.pt.sha256"  # sha256sum alone trusts too
    subprocess.run(command, shell=True, cwd=checkpoint_dir(run), check=True)
    train(tiny_config(data_dir, run, max_steps=STEPS, resume=True))
    assert _train_records(run) == _train_records(reference)


def test_a_checkpoint_of_an_older_parcae_is_upgraded_then_resumes_exactly(
    data_dir, reference, run, tmp_path, capsys
):
    """Before 2026-11-30 a checkpoint held NumPy's RNG state as a pickled tuple of an ndarray,
    and had no hash: refused by weights_only loading, until `parcae upgrade-checkpoints`."""
    for path in list_checkpoints(run):
        state = torch.load(path, weights_only=True)
        numpy = state["rng"]["numpy"]
        state["rng"]["numpy"] = (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
        torch.save(state, path)
        hash_path(path).unlink()
    assert "parcae upgrade-checkpoints" in refuse(_argv(data_dir, run, tmp_path), capsys)
    assert main(["upgrade-checkpoints", str(run)]) == 0
    out = capsys.readouterr().out
    assert "upgraded 2 checkpoints" in out and "step_0000006.pt" in out
    assert all(hash_path(path).exists() for path in list_checkpoints(run))
    assert main(["upgrade-checkpoints", str(run)]) == 0  # a second time: nothing to do
    assert "nothing to upgrade" in capsys.readouterr().out
    train(tiny_config(data_dir, run, max_steps=STEPS, resume=True))
    assert _train_records(run) == _train_records(reference)


def test_upgrade_refuses_a_directory_without_checkpoints_and_a_foreign_file(tmp_path, capsys):
    assert "no checkpoints" in refuse(["upgrade-checkpoints", str(tmp_path)], capsys)
    checkpoint_dir(tmp_path).mkdir()
    torch.save({"weights": torch.zeros(2)}, checkpoint_dir(tmp_path) / "step_0000001.pt")
    line = refuse(["upgrade-checkpoints", str(tmp_path)], capsys, protect=[tmp_path])
    assert "not a parcae training checkpoint" in line


class RunsCode:
    """Unpickled, it calls `open(marker, "w")`: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(
    data_dir, tmp_path, capsys
):
    run, marker = tmp_path / "run", tmp_path / "code_ran"
    crafted = checkpoint_dir(run) / "step_0000002.pt"
    crafted.parent.mkdir(parents=True)
    torch.save({"step": 2, "rng": RunsCode(marker)}, crafted)
    _write_hash(crafted)  # a matching hash: only weights_only stands in the way
    line = refuse(_argv(data_dir, run, tmp_path), capsys, protect=[crafted])
    assert "step_0000002.pt: holds a pickled object, not only tensors" in line
    assert "io.open" in line and "choose another out_dir" in line
    assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the payload is live: loading it unsafely runs it
    assert marker.exists()


def _fail_torch_save(monkeypatch):
    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)


def _fail_open(monkeypatch, name_part, error):
    """Creating a temporary whose name holds `name_part` fails with `error` (the checkpoint's
    files are written through `parcae.outputs.write_atomic`, which creates them by mkstemp)."""
    create = tempfile.mkstemp

    def failing_mkstemp(*args, prefix=None, **kwargs):
        if prefix is not None and name_part in prefix:
            raise OSError(error, os.strerror(error), prefix)
        return create(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", failing_mkstemp)


@pytest.mark.parametrize(
    "failure, reason",
    [
        ("disk full in torch.save", "No space left on device"),
        ("disk full writing the hash", "No space left on device"),
        ("unwritable directory", "Permission denied"),
        ("read-only filesystem", "Read-only file system"),
    ],
)
def test_a_failed_save_is_one_line_and_keeps_the_earlier_checkpoints(
    data_dir, finished, tmp_path, capsys, monkeypatch, failure, reason
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    directory = checkpoint_dir(run)
    if failure == "disk full in torch.save":
        _fail_torch_save(monkeypatch)
    elif failure == "disk full writing the hash":
        _fail_open(monkeypatch, ".pt.sha256.", errno.ENOSPC)
    elif failure == "unwritable directory":
        _fail_open(monkeypatch, ".pt.", errno.EACCES)
    else:
        _fail_open(monkeypatch, ".pt.", errno.EROFS)
    earlier = [directory / "step_0000002.pt", directory / "step_0000002.pt.sha256"]
    line = refuse(_argv(data_dir, run, tmp_path, "max_steps=6"), capsys, protect=earlier)
    assert line == (
        f"parcae: error: cannot save checkpoint step_0000004.pt in {directory}: {reason}; the "
        f"earlier checkpoints are intact (the newest good one is {earlier[0]})"
    )
    assert _files(run) == {"step_0000002.pt", "step_0000002.pt.sha256"}  # no partial file


def test_pruning_deletes_each_checkpoint_with_its_hash_and_leaves_newer_ones(tmp_path):
    directory = checkpoint_dir(tmp_path)
    directory.mkdir(parents=True)
    for step in (2, 4, 6, 8):
        path = directory / f"step_{step:07d}.pt"
        path.write_bytes(b"state")
        if step != 8:  # step 8: a bad checkpoint a resume skipped
            _write_hash(path)
    prune_checkpoints(tmp_path, 2, directory / "step_0000006.pt")
    assert _files(tmp_path) == {
        "step_0000004.pt",
        "step_0000004.pt.sha256",
        "step_0000006.pt",
        "step_0000006.pt.sha256",
        "step_0000008.pt",
    }
    prune_checkpoints(tmp_path, 1, directory / "step_0000006.pt")
    assert _files(tmp_path) == {"step_0000006.pt", "step_0000006.pt.sha256", "step_0000008.pt"}


def test_a_non_finite_loss_names_the_verified_checkpoint_not_the_newest_file(data_dir, run):
    corrupt_middle(checkpoint_dir(run) / "step_0000006.pt")

    def explode(model, step):
        if step == 4:
            with torch.no_grad():
                model.transformer.wte.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="last good checkpoint is .*step_0000004.pt;"):
        train(tiny_config(data_dir, run, max_steps=STEPS, resume=True), after_backward=explode)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["max_steps=1"],
            "is at step 2: the budget (max_steps=1, 1 step) is already reached; raise it",
        ),
        (
            ["max_steps=null", "max_tokens=128"],
            "is at step 2: the budget (max_tokens=128, 1 step) is already reached; raise it",
        ),
        (
            ["max_steps=2"],
            "is at step 2, the end of the budget (max_steps=2): this run is already finished",
        ),
    ],
)
def test_resuming_at_or_past_the_budget_is_refused(
    data_dir, finished, tmp_path, capsys, overrides, expected
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    line = refuse(_argv(data_dir, run, tmp_path, *overrides), capsys, protect=[run])
    assert f"parcae: error: checkpoint {checkpoint_dir(run) / 'step_0000002.pt'} " in line
    assert expected in line


def test_a_run_that_died_before_its_export_is_finished_without_training(
    data_dir, finished, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "model")  # killed during the final evaluation
    result = train(tiny_config(data_dir, run, max_steps=2, resume=True))
    assert result.steps == 2 and result.final_eval
    assert _train_records(run) == _train_records(finished)
    assert (run / "model" / "tokenizer.json").is_file()
