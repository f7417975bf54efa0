"""isoFLOP sweeps (parcae.scaling.sweep): the grid, the derived budgets, and real tiny sweeps that
train, resume, fail and run on process pools and Ray."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import pytest
import yaml

import parcae.train.loop
from parcae.errors import ConfigError, MissingDependencyError
from parcae.model import preset_config
from parcae.model.flops import training_flops_per_token
from parcae.scaling import sweep_commands
from parcae.scaling.launchers import run_ray
from parcae.scaling.sweep import (
    COLUMNS,
    Point,
    default_backprop_depth,
    format_duration,
    load_sweep,
    plan_point,
    run_sweep,
)
from parcae.train.checkpoint import latest_checkpoint
from parcae.train.loop import TrainResult, train
from tests.scaling.conftest import TINY_MODEL

VOCAB = 400  # the tiny dataset's tokenizer


def read_table(path):
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


SAME = ("flops_budget", "mean_recurrence", "mean_backprop_depth", "seed", "params")
SAME += ("flops_per_token", "tokens", "steps", "flops", "status", "error")


def count_trains(monkeypatch) -> list:
    """Record the config of every training run that a sweep starts in this process."""
    calls = []

    def counting(config):
        calls.append(config)
        return train(config)

    monkeypatch.setattr(parcae.train.loop, "train", counting)
    return calls


def test_grid_points_and_point_configs(write_sweep, tmp_path):
    sweep = load_sweep(write_sweep())
    points = sweep.points()
    assert [p.key for p in points] == [
        (8e8, 2, 1, 0),
        (8e8, 1, 1, 0),
        (4e8, 2, 1, 0),
        (4e8, 1, 1, 0),
    ]
    assert sweep.run_dir(points[0]) == tmp_path / "sweep" / "runs" / "C=8e+08_mu=2_seed=0"
    config = sweep.point_config(points[1])
    assert (config.max_flops, config.max_steps, config.max_tokens) == (8e8, None, None)
    assert config.model_overrides == {**TINY_MODEL, "mean_recurrence": 1, "mean_backprop_depth": 1}
    assert config.eval_depths == [1] and config.seed == 0 and config.sample_tokens == 0
    assert config.out_dir == str(sweep.run_dir(points[1])) and not config.progress

    # a grid mean_backprop_depth is part of the point and its run dir; k > μ is left out
    grid = dict(flops_budget=["1e9"], mean_recurrence=[1, 4], mean_backprop_depth=[2, 3])
    sweep = load_sweep(write_sweep("k", grid=grid))
    assert [p.key for p in sweep.points()] == [(1e9, 4, 2, 0), (1e9, 4, 3, 0)]
    assert sweep.run_dir(sweep.points()[1]).name == "C=1e+09_mu=4_k=3_seed=0"

    with pytest.raises(ConfigError, match="unknown sweep key 'grids'"):
        load_sweep(write_sweep("bad", grids={}))
    with pytest.raises(ConfigError, match="unknown grid key 'mu'"):
        load_sweep(write_sweep("bad", grid=dict(flops_budget=[1e9], mu=[1])))
    with pytest.raises(ConfigError, match=r"mean_recurrence 0 must be an integer in \[1, 1024\]"):
        load_sweep(write_sweep("bad", grid=dict(flops_budget=[1e9], mean_recurrence=[0])))
    with pytest.raises(ConfigError, match="unknown training config key 'sq_len'"):
        load_sweep(write_sweep("bad", overrides={"sq_len": 32}))


def test_tokens_are_the_budget_over_training_flops(write_sweep):
    sweep = load_sweep(write_sweep(grid=dict(flops_budget=[1e9, 3e9], mean_recurrence=[1, 2, 4])))
    tokens_per_step = 4 * 32
    for point in sweep.points():
        plan = plan_point(sweep.point_config(point), VOCAB)
        model = preset_config(
            "parcae-tiny",
            **TINY_MODEL,
            vocab_size=VOCAB,
            mean_recurrence=point.mean_recurrence,
            mean_backprop_depth=default_backprop_depth(point.mean_recurrence),
        )
        flops_per_token = training_flops_per_token(model, 32)
        assert plan["flops_per_token"] == pytest.approx(flops_per_token)
        ideal = point.flops_budget / flops_per_token
        assert ideal - tokens_per_step < plan["tokens"] <= ideal
        assert plan["tokens"] == plan["steps"] * tokens_per_step
    plans = [
        plan_point(sweep.point_config(Point(3e9, mu, default_backprop_depth(mu), 0)), VOCAB)
        for mu in (1, 4)
    ]
    assert plans[0]["tokens"] > plans[1]["tokens"]  # a deeper loop costs more per token


def test_sweep_trains_every_point_then_skips_them(write_sweep, tmp_path, monkeypatch, capsys):
    path = write_sweep()
    calls = count_trains(monkeypatch)
    report = run_sweep(load_sweep(path))
    assert (report.trained, report.failed, report.skipped) == (4, 0, 0)
    assert len(calls) == 4 and not any(config.resume for config in calls)
    rows = read_table(tmp_path / "sweep" / "results.csv")
    sweep = load_sweep(path)
    for row, point in zip(rows, sweep.points()):
        plan = plan_point(sweep.point_config(point), VOCAB)
        assert row["status"] == "done" and row["error"] == ""
        assert (float(row["flops_budget"]), int(row["mean_recurrence"])) == point.key[:2]
        assert int(row["tokens"]) == plan["tokens"] and int(row["steps"]) == plan["steps"] > 0
        assert int(row["params"]) == plan["params"]
        assert float(row["flops"]) == pytest.approx(plan["tokens"] * plan["flops_per_token"])
        assert float(row["flops"]) <= point.flops_budget
        assert 3 < float(row["val_loss"]) < math.log(VOCAB) + 1 and float(row["val_bpb"]) > 0
        assert float(row["wall_seconds"]) > 0 and row["run_dir"] == str(sweep.run_dir(point))
    output = capsys.readouterr().out
    assert "[4/4] C=4e+08 μ=1: 384 tokens, val loss" in output
    assert output.count("; ETA ") == 4 and "ETA 0 s" in output.splitlines()[-2]  # the last point
    assert "4 trained, 0 failed, 0 skipped" in output and "peak memory" in output

    report = run_sweep(load_sweep(path))  # everything is done: nothing trains
    assert (report.trained, report.skipped) == (0, 4) and len(calls) == 4
    assert read_table(tmp_path / "sweep" / "results.csv") == rows


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (0.4, 42, 185, 3720, -1)] == [
        "0 s",
        "42 s",
        "3 min 05 s",
        "1 h 02 min",
        "0 s",
    ]


def test_interrupted_point_resumes_from_its_checkpoint(write_sweep, tmp_path, monkeypatch):
    grid = dict(flops_budget=[8e8], mean_recurrence=[2])
    whole = run_sweep(load_sweep(write_sweep("whole", grid=grid))).rows[0]
    sweep = load_sweep(write_sweep("cut", grid=grid))
    point = sweep.points()[0]
    config = sweep.point_config(point)

    def crash(model, step):
        if step == 3:  # after the checkpoint of step 2
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        train(config, after_backward=crash)
    assert latest_checkpoint(config.out_dir).name == "step_0000002.pt"

    calls = count_trains(monkeypatch)
    row = run_sweep(sweep).rows[0]
    assert [config.resume for config in calls] == [True]
    assert row["status"] == "done" and row["steps"] == whole["steps"] == 6
    assert row["tokens"] == whole["tokens"]
    assert row["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-6)


def test_failed_point_is_recorded_and_retried(write_sweep, tmp_path, monkeypatch):
    path = write_sweep(grid=dict(flops_budget=[4e8, 1e5], mean_recurrence=[1]))
    report = run_sweep(load_sweep(path))
    assert (report.trained, report.failed) == (1, 1)
    done, failed = read_table(tmp_path / "sweep" / "results.csv")
    assert done["status"] == "done" and math.isfinite(float(done["val_loss"]))
    assert failed["status"] == "failed" and failed["val_loss"] == ""
    assert failed["error"].startswith("ConfigError: the training budget allows 0 steps")

    calls = count_trains(monkeypatch)
    args = argparse.Namespace(sweep=str(path), workers=1, launcher="local")
    assert sweep_commands.run_sweep_command(args) == 1  # retried, and failed again
    assert len(calls) == 1 and calls[0].max_flops == 1e5
    rows = read_table(tmp_path / "sweep" / "results.csv")
    assert [row["status"] for row in rows] == ["done", "failed"]  # one row per point


def test_a_signal_stops_the_sweep_and_leaves_the_point_to_resume(
    write_sweep, tmp_path, monkeypatch
):
    def stopped(config):
        return TrainResult(Path(config.out_dir), 2, 256, 0, [], None, interrupted_by=2)

    monkeypatch.setattr(parcae.train.loop, "train", stopped)
    with pytest.raises(KeyboardInterrupt, match="stopped by signal 2"):
        run_sweep(load_sweep(write_sweep()))
    assert read_table(tmp_path / "sweep" / "results.csv") == []


def test_two_workers_and_ray_give_the_same_table(write_sweep, tmp_path):
    one = run_sweep(load_sweep(write_sweep("one")))
    two = run_sweep(load_sweep(write_sweep("two")), workers=2)
    import ray  # the optional extra parcae[ray]

    try:
        on_ray = run_sweep(load_sweep(write_sweep("ray")), workers=2, launcher="ray")
    finally:
        ray.shutdown()
    assert [report.trained for report in (one, two, on_ray)] == [4, 4, 4]
    tables = [read_table(tmp_path / name / "results.csv") for name in ("one", "two", "ray")]
    for table in tables[1:]:
        for row, reference in zip(table, tables[0], strict=True):
            assert [row[key] for key in SAME] == [reference[key] for key in SAME]
            assert float(row["val_loss"]) == pytest.approx(float(reference["val_loss"]), abs=1e-6)
            assert float(row["val_bpb"]) == pytest.approx(float(reference["val_bpb"]), abs=1e-6)


def test_command_line(write_sweep, tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    sweep_commands.register(parser.add_subparsers())
    args = parser.parse_args(["sweep", str(write_sweep()), "--workers", "2", "--launcher", "ray"])
    assert (args.workers, args.launcher, args.func) == (2, "ray", sweep_commands.run_sweep_command)
    with pytest.raises(ConfigError, match="no sweep file at"):
        args.func(parser.parse_args(["sweep", str(tmp_path / "missing.yaml")]))
    path = write_sweep("bad", grid=dict(flops_budget=[1e9], mean_recurrence=[2]))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "x": 1}))
    with pytest.raises(ConfigError, match="unknown sweep key 'x'"):
        args.func(parser.parse_args(["sweep", str(path)]))
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        run_sweep(load_sweep(write_sweep()), workers=0)

    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'parcae\[ray\]'"):
        next(run_ray(print, [], 1))
