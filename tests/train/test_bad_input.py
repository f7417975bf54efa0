"""Bad input to `parcae train`: each case exits 2 with one line on stderr, no traceback, and its
inputs (the prepared data, an existing run) untouched (`tests/bad_input.py`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from parcae.train.loop import train
from tests.bad_input import refuse
from tests.train.conftest import tiny_config

MISSING_DEVICE = "cuda:99" if torch.cuda.is_available() else "cuda"


def tiny_run(data_dir: Path, out_dir: Path, *overrides: str) -> list[str]:
    """`parcae train` argv of a 2-step run of a 64-wide model, then `overrides`."""
    return [
        "train",
        f"data={data_dir}",
        f"out_dir={out_dir}",
        "device=cpu",
        "precision=fp32",
        "progress=false",
        "tensorboard=false",
        "sample_tokens=0",
        "max_steps=2",
        "batch_size=4",
        "seq_len=32",
        "eval_batches=1",
        "final_eval_batches=1",
        "model_overrides={d_model: 64, ffn_dim: 128, n_heads: 2, n_prelude: 1, n_core: 1, "
        "n_coda: 1, context_length: 64}",
        *overrides,
    ]


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)  # 9**9 strings from about 400 bytes


@pytest.mark.parametrize(
    "override, expected",
    [
        ("resume=nope", "'resume': must be true or false"),
        ("resume=yes", "'resume': must be true or false"),
        ("tensorboard=maybe", "'tensorboard': must be true or false"),
        ("progress=1", "'progress': must be true or false"),
        ("compile=on", "'compile': must be true or false"),
        ("lr=inf", "'lr': must be a positive number"),
        ("lr=nan", "'lr': must be a positive number"),
        ("lr=-0.1", "'lr': must be a positive number"),
        ("lr=fast", "'lr'"),
        ("adam_lr=0", "'adam_lr'"),
        ("batch_size=0", "'batch_size': must be a positive integer"),
        ("batch_size=1.5", "'batch_size'"),
        ("seq_len=0", "'seq_len'"),
        ("seq_len=4096", "exceeds the model's context_length"),
        ("optimizer=sgd", "'optimizer': 'sgd' is not one of"),
        ("precision=fp16", "'precision'"),
        ("parallel=tp", "'parallel'"),
        (f"device={MISSING_DEVICE}", "but this machine has"),
        ("device=foo", "is not a device"),
        ("device=meta", "does not run on"),
        ("vocab_size=1000000000", "'vocab_size': must be between"),
        ("vocab_size=10", "'vocab_size'"),
        ("lrr=0.1", "did you mean lr"),
        ("model=parcae-gigantic", "parcae-gigantic"),
        ("model=3", "'model': must be a non-empty string"),
        ("model_overrides=3", "'model_overrides'"),
        ("model_overrides.d_model=-1", "d_model"),
        ("model_overrides.colour=blue", "colour"),
        ("model_overrides.n_heads=3", "n_heads"),
        ("eval_depths=[0]", "'eval_depths'"),
        ("eval_depths=4", "'eval_depths'"),
        ("micro_batch_size=3", "does not divide batch_size"),
        ("adam_betas=[0.9,1.5]", "'adam_betas'"),
        ("adam_betas=5", "'adam_betas'"),
        ("max_steps=0", "'max_steps'"),
        ("max_flops=inf", "'max_flops'"),
        ("tokens_per_param=0", "'tokens_per_param'"),
        ("warmup_steps=-1", "'warmup_steps'"),
        ("val_fraction=1", "'val_fraction'"),
        ("grad_clip=-1", "'grad_clip'"),
        ("keep_checkpoints=0", "'keep_checkpoints'"),
        ("eval_batch_size=0", "'eval_batch_size'"),
        ("log_every=0", "'log_every'"),
        ("seed=1.5", "'seed'"),
        ("decay_fraction=2", "'decay_fraction'"),
        ("sample_temperature=-1", "'sample_temperature'"),
        ("out_dir=[1,2]", "'out_dir': must be a non-empty string"),
        ("data=", "'data': must be a non-empty string"),
        ("=3", "expected key=value"),
        ("lr.x=3", "not a mapping"),
        # sizes, counts and depths beyond their documented bounds (README, Guarantees)
        ("batch_size=1000000000", "'batch_size': must be a positive integer (at most 65,536)"),
        ("eval_batch_size=100000000", "'eval_batch_size'"),
        ("ns_steps=1000000", "'ns_steps'"),
        ("max_steps=10000000000000000", "'max_steps'"),
        ("model_overrides.context_length=10000000", "'context_length'"),
        ("model_overrides.d_model=1000000000", "'d_model'"),
        ("model_overrides.mean_recurrence=147896", "'mean_recurrence'"),
        ("model_overrides.n_core=1000000", "'n_core'"),
        ("lr=&a [*a]", "lr"),
    ],
)
def test_train_refuses_a_bad_override(data_dir, tmp_path, capsys, override, expected):
    line = refuse(tiny_run(data_dir, tmp_path / "run", override), capsys, protect=[data_dir])
    assert expected in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_refuses_a_missing_corpus(tmp_path, capsys):
    argv = tiny_run(tmp_path / "nowhere", tmp_path / "run")
    assert "nowhere" in refuse(argv, capsys)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr: [0.1", "not valid YAML"),
        ("- lr: 0.1\n", "expected a mapping"),
        ("lr: 0.1\nlr_typo: 2\n", "'lr_typo'"),
        (ALIAS_BOMB, "aliases (*name) are not allowed"),
        ("lr: " + "[" * 100_000, "not valid YAML"),
        ("{" * 50_000 + "}" * 50_000, "not valid YAML"),
        (b"\xc3\x28lr: 1", "not valid YAML"),
    ],
    ids=["bad YAML", "a list", "typo", "alias bomb", "deep list", "deep map", "not UTF-8"],
)
def test_train_refuses_a_bad_config_file(data_dir, tmp_path, capsys, text, expected):
    config = tmp_path / "run.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = tiny_run(data_dir, tmp_path / "run")
    argv.insert(1, str(config))
    assert expected in refuse(argv, capsys, protect=[config, data_dir])


def test_train_refuses_a_missing_config_file_and_stray_words(data_dir, tmp_path, capsys):
    argv = tiny_run(data_dir, tmp_path / "run")
    assert "no config file" in refuse([*argv[:1], "nowhere.yaml", *argv[1:]], capsys)
    config = tmp_path / "run.yaml"
    config.write_text("lr: 0.01\n")
    stray = [*argv[:1], str(config), "fast", *argv[1:]]
    assert "expected key=value" in refuse(stray, capsys, protect=[config])


@pytest.mark.parametrize("under", [False, True])
def test_train_refuses_an_out_dir_that_is_or_sits_under_a_file(data_dir, tmp_path, capsys, under):
    file = tmp_path / "not_a_dir"
    file.write_text("precious")
    out_dir = file / "run" if under else file
    line = refuse(tiny_run(data_dir, out_dir), capsys, protect=[file, data_dir])
    assert "not_a_dir" in line


def test_train_names_a_shard_holding_ids_beyond_the_vocabulary(data_dir, tmp_path, capsys):
    """Was an IndexError inside the embedding at the first step."""
    corrupt = tmp_path / "prepared"
    shutil.copytree(data_dir, corrupt)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    for shard in manifest["splits"]["train"]["shards"]:
        path = corrupt / shard["file"]
        tokens = np.fromfile(path, dtype=manifest["dtype"])
        tokens[::50] = manifest["vocab_size"] + 7
        tokens.tofile(path)
    line = refuse(tiny_run(corrupt, tmp_path / "run"), capsys, protect=[corrupt])
    assert "outside the vocabulary" in line and "prepare the dataset again" in line


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(data_dir, out_dir, max_steps=2, checkpoint_every=1))
    return out_dir


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], "already holds checkpoints"),
        (["resume=true", "seed=7"], "seed"),
        (["resume=true", "seq_len=16"], "seq_len"),
        (["resume=true", "optimizer=adamw"], "optimizer"),
    ],
)
def test_train_protects_an_existing_run(
    finished_run, data_dir, tmp_path, capsys, overrides, expected
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    argv = tiny_run(data_dir, run, "batch_size=4", *overrides)
    assert expected in refuse(argv, capsys, protect=[run, data_dir])


@pytest.mark.parametrize(
    "records, expected",
    [
        (None, "no metrics.jsonl records"),
        ("", "no metrics.jsonl records"),
        ('{"step": 1, "loss": 5.0}\n{broken\n{"step": 3, "loss": 4.0}\n', "metrics.jsonl:2"),
    ],
)
def test_plot_refuses_a_run_without_readable_records(tmp_path, capsys, records, expected):
    run = tmp_path / "run"
    run.mkdir()
    if records is not None:
        (run / "metrics.jsonl").write_text(records)
    assert expected in refuse(["plot", str(run)], capsys, protect=[run])


def test_plot_refuses_an_out_that_is_a_file(finished_run, tmp_path, capsys):
    (tmp_path / "a_file").write_text("precious")
    argv = ["plot", str(finished_run), "--out", str(tmp_path / "a_file")]
    assert "a_file" in refuse(argv, capsys, protect=[finished_run, tmp_path / "a_file"])
