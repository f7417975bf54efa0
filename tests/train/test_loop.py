import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from parcae import from_pretrained
from parcae.errors import ConfigError, TrainingError
from parcae.train.checkpoint import list_checkpoints
from parcae.train.loop import train
from parcae.train.metrics import read_metrics
from parcae.train.model import cpp_compiler

from .conftest import tiny_config


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return train(tiny_config(data_dir, out, sample_tokens=4, tensorboard=True)), out


def test_a_run_writes_metrics_checkpoints_model_and_config(full_run):
    result, out = full_run
    assert result.steps == 6 and result.tokens == 6 * 4 * 32
    records = read_metrics(out)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert set(evals[-1]["val_bpb"]) == {"1", "2", "4"}
    assert 0 < evals[-1]["spectral_radius"] < 1 and "residual" in evals[-1]
    assert [p.name for p in list_checkpoints(out)] == ["step_0000004.pt", "step_0000006.pt"]
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 6
    assert any((out / "tensorboard").iterdir())
    assert (out / "model" / "tokenizer.json").is_file()
    assert from_pretrained(out / "model").config.d_model == 64
    assert result.sample.startswith("ROMEO:")


def test_final_eval_reports_each_depth_with_consistent_bpb(full_run):
    result, _ = full_run
    assert [r.depth for r in result.final_eval] == [1, 2, 4]
    for r in result.final_eval:
        assert r.bpb == pytest.approx(r.loss * r.tokens / (math.log(2) * r.bytes))


def test_training_lowers_the_validation_loss(data_dir, tmp_path):
    result = train(tiny_config(data_dir, tmp_path, max_steps=30, eval_every=100))
    first = read_metrics(tmp_path)[0]["loss"]
    assert result.final_eval[-1].loss < first - 0.5


def test_resume_after_sigterm_gives_the_same_losses(data_dir, full_run, tmp_path):
    _, reference = full_run

    def terminate(model, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train(tiny_config(data_dir, tmp_path, checkpoint_every=100), after_backward=terminate)
    assert stopped.interrupted_by == signal.SIGTERM and stopped.steps == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003.pt"]
    train(tiny_config(data_dir, tmp_path, resume=True))
    resumed, expected = _losses(tmp_path), _losses(reference)
    assert resumed.keys() == expected.keys()
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6)


KILLER = """
import os, signal, sys
from parcae.train.config import load_config
from parcae.train.loop import train
def hook(model, step):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
train(load_config(sys.argv[1]), after_backward=hook)
"""


def test_kill_9_between_checkpoints_then_resume_gives_the_same_losses(data_dir, full_run, tmp_path):
    _, reference = full_run
    config = tiny_config(data_dir, tmp_path / "run")
    config.save(tmp_path / "run.yaml")
    killed = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "run.yaml"), "4"])
    assert killed.returncode == -signal.SIGKILL
    assert list_checkpoints(tmp_path / "run")[-1].name == "step_0000004.pt"
    assert max(_losses(tmp_path / "run")) == 4  # step 5 died before being logged
    config.resume = True
    train(config)
    resumed, expected = _losses(tmp_path / "run"), _losses(reference)
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6)


def test_a_non_finite_gradient_skips_the_step(data_dir, tmp_path):
    def poison(model, step):
        if step == 2:
            next(model.parameters()).grad[0, 0] = float("nan")

    result = train(tiny_config(data_dir, tmp_path, max_steps=4), after_backward=poison)
    assert result.skipped_steps == 1 and result.steps == 4
    record = [r for r in read_metrics(tmp_path) if r["kind"] == "train"][2]
    assert record["skipped"] == 1 and record["grad_norm"] == "nan"
    assert all(torch.isfinite(p).all() for p in from_pretrained(tmp_path / "model").parameters())


def test_a_non_finite_loss_stops_keeping_the_last_checkpoint(data_dir, tmp_path):
    def explode(model, step):
        if step == 2:
            with torch.no_grad():
                model.transformer.wte.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="step 4.*step_0000002.pt"):
        train(tiny_config(data_dir, tmp_path, max_steps=6), after_backward=explode)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002.pt"]


def test_an_existing_run_is_not_overwritten_without_resume(data_dir, full_run):
    _, out = full_run
    with pytest.raises(Exception, match="resume=true"):
        train(tiny_config(data_dir, out))


@pytest.mark.parametrize("preset", ["gpt-tiny", "rdm-tiny"])
def test_baselines_train_with_the_same_loop(data_dir, tmp_path, preset):
    overrides = {
        k: v
        for k, v in tiny_config(data_dir, tmp_path).model_overrides.items()
        if preset == "rdm-tiny" or k not in ("n_prelude", "n_core", "n_coda")
    }
    if preset == "gpt-tiny":
        overrides["n_layers"] = 3
    result = train(
        tiny_config(data_dir, tmp_path, model=preset, model_overrides=overrides, max_steps=2)
    )
    depths = [r.depth for r in result.final_eval]
    assert depths == ([None] if preset == "gpt-tiny" else [1, 2, 4])
    assert all(math.isfinite(r.bpb) for r in result.final_eval)


def test_gradient_accumulation_matches_the_full_batch(data_dir, full_run, tmp_path):
    _, reference = full_run
    train(tiny_config(data_dir, tmp_path, micro_batch_size=2, max_steps=3))
    accumulated, expected = _losses(tmp_path), _losses(reference)
    for step in accumulated:
        assert accumulated[step] == pytest.approx(expected[step], abs=1e-4)


def test_max_tokens_sets_the_number_of_steps(data_dir, tmp_path):
    result = train(tiny_config(data_dir, tmp_path, max_steps=None, max_tokens=3 * 4 * 32 + 5))
    assert result.steps == 3


def test_activation_checkpointing_gives_the_same_losses(data_dir, full_run, tmp_path):
    _, reference = full_run
    train(tiny_config(data_dir, tmp_path, activation_checkpointing=True))
    checkpointed, expected = _losses(tmp_path), _losses(reference)
    assert checkpointed.keys() == expected.keys()
    for step in expected:
        assert checkpointed[step] == pytest.approx(expected[step], abs=1e-6)


def test_bf16_autocast_trains_close_to_fp32(data_dir, full_run, tmp_path):
    _, reference = full_run
    result = train(tiny_config(data_dir, tmp_path, precision="bf16"))
    bf16, fp32 = _losses(tmp_path), _losses(reference)
    assert bf16.keys() == fp32.keys()
    for step in fp32:
        assert bf16[step] == pytest.approx(fp32[step], abs=0.05)
    assert bf16 != fp32  # autocast really ran in bf16
    assert all(math.isfinite(r.loss) for r in result.final_eval)


@pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_blocks_give_the_same_losses(data_dir, full_run, tmp_path):
    _, reference = full_run
    # two steps: the first loss precedes any update, the second follows one identical step;
    # then the sample decodes over a KV cache, through the blocks' eager path
    result = train(
        tiny_config(
            data_dir, tmp_path, compile=True, max_steps=2, final_eval_batches=1, sample_tokens=4
        )
    )
    compiled, expected = _losses(tmp_path), _losses(reference)
    assert compiled.keys() == {1, 2}
    for step in compiled:
        assert compiled[step] == pytest.approx(expected[step], abs=1e-5)
    assert result.sample is not None and len(result.sample) > len("ROMEO:")


def test_compile_without_a_cpp_compiler_is_refused_clearly(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        train(tiny_config(data_dir, tmp_path, compile=True))
