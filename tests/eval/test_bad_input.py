"""Bad input to `parcae eval` and `parcae fit depth`: each case exits 2 with one line on stderr,
no traceback, and its inputs untouched (`tests/bad_input.py`). The bundle and task-file cases
live in test_commands.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.bad_input import refuse
from tests.conftest import BIGBENCH_DIR

MISSING_DEVICE = "cuda:99" if torch.cuda.is_available() else "cuda"


@pytest.fixture(autouse=True)
def offline_bigbench(tmp_path, monkeypatch):
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PARCAE_BIGBENCH_DIR", str(BIGBENCH_DIR))
    monkeypatch.delenv("PARCAE_EVAL_BUNDLE", raising=False)


def eval_argv(model: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--tasks", "bigbench_operators", "--no-progress", *extra]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--device", MISSING_DEVICE], "but this machine has"),
        (["--device", "foo"], "is not a device"),
        (["--max-per-task", "0"], "--max-per-task"),
        (["--max-per-task", "-3"], "--max-per-task"),
        (["--max-per-task", "many"], "positive integer or all"),
        (["--num-fewshot", "-1"], "--num-fewshot"),
        (["--batch-size", "-2"], "--batch-size"),
        (["--tasks", ""], "no task named"),
        (["--tasks", "bigbench_operators,nonsense_task"], "nonsense_task"),
        (["--depths", ""], "--depths"),
        (["--depths", "-1"], "--depths"),
        (["--depths", "1.5"], "--depths"),
        (["--depths", "1..100000"], "limit"),
        (["--depths", "1000000000"], "limit"),
        (["--tasks", "bpb", "--data", "/no/such/prepared"], "not a prepared directory"),
        (["--seq-len", "x"], "invalid int"),
        (["--seq-len", "0"], "--seq-len must be in [1, "),
        (["--seq-len", "100000"], "--seq-len must be in [1, "),
        (["--unknown-flag"], "unrecognized"),
    ],
)
def test_eval_refuses_a_bad_option(model_dir, tmp_path, capsys, extra, expected):
    argv = eval_argv(model_dir, "--out", str(tmp_path / "r.json"), *extra)
    assert expected in refuse(argv, capsys, protect=[model_dir])
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("out", ["a_dir", "a_file/r.json"])
def test_eval_refuses_an_out_it_cannot_write(model_dir, tmp_path, capsys, out):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("precious")
    argv = eval_argv(model_dir, "--out", str(tmp_path / out))
    line = refuse(argv, capsys, protect=[model_dir, tmp_path / "a_file", tmp_path / "a_dir"])
    assert "--out" in line


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("missing", "no such model"),
        ("file", "got a file"),
        ("empty_dir", "empty_dir"),
        ("bad_config", "config.json"),
        ("truncated_weights", "model.safetensors"),
    ],
)
def test_eval_refuses_a_damaged_model(model_dir, tmp_path, capsys, damage, expected):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    target = model
    if damage == "missing":
        target = tmp_path / "nowhere"
    elif damage == "file":
        target = model / "config.json"
    elif damage == "empty_dir":
        target = tmp_path / "empty_dir"
        target.mkdir()
    elif damage == "bad_config":
        (model / "config.json").write_text("{not json")
    elif damage == "truncated_weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    line = refuse(eval_argv(target, "--out", str(tmp_path / "r.json")), capsys, protect=[model])
    assert expected in line


def _results(tmp_path: Path, content) -> Path:
    path = tmp_path / "results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not valid JSON"),
        ("[" * 100_000, "nested too deeply"),
        ([1, 2], "not a `parcae eval` results file"),
        ({}, "not a `parcae eval` results file"),
        ({"model": "m", "looped": True, "depths": ["1", "2", "4"]}, "bpb absent"),
        (
            {"model": "m", "looped": True, "depths": ["1", "2", "4"], "bpb": {"1": "x"}},
            "bpb",
        ),
    ],
)
def test_fit_depth_refuses_a_bad_results_file(tmp_path, capsys, content, expected):
    path = _results(tmp_path, content)
    assert expected in refuse(["fit", "depth", str(path)], capsys, protect=[path])


def test_fit_depth_refuses_a_missing_file_a_directory_and_a_file_as_out(tmp_path, capsys):
    assert "no such results file" in refuse(["fit", "depth", str(tmp_path / "x.json")], capsys)
    assert "no such results file" in refuse(["fit", "depth", str(tmp_path)], capsys)
    results = {
        "model": "m",
        "looped": True,
        "depths": ["1", "2", "3", "4"],
        "bpb": {"1": 2.0, "2": 1.9, "3": 1.85, "4": 1.83},
    }
    path = _results(tmp_path, results)
    (tmp_path / "a_file").write_text("precious")
    argv = ["fit", "depth", str(path), "--out", str(tmp_path / "a_file")]
    assert "is a file" in refuse(argv, capsys, protect=[path, tmp_path / "a_file"])
