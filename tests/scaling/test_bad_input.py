"""Bad input to `parcae plan`, `parcae fit isoflop` and `parcae sweep`: each case exits 2 with one
line on stderr, no traceback, and its inputs untouched (`tests/bad_input.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from parcae.cli import main
from tests.bad_input import refuse

HEADER = "flops_budget,mean_recurrence,seed,tokens,val_loss,status\n"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)  # 9**9 strings from about 400 bytes


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--flops", "0"], "--flops must be a positive number"),
        (["--flops=-1e15"], "--flops must be a positive number"),
        (["--flops", "inf"], "--flops must be a positive number"),
        (["--flops", "nan"], "--flops must be a positive number"),
        (["--flops", "lots"], "invalid float"),
        (["--flops", "1e3"], "too small to plan for"),
        ([], "--flops"),
        (["--flops", "1e15", "--seq-len", "0"], "'seq_len'"),
        (["--flops", "1e15", "--batch-size", "0"], "'batch_size'"),
        (["--flops", "1e15", "--model", "parcae-gigantic"], "unknown model preset"),
        (["--flops", "1e15", "--model", "gpt-tiny"], "looped"),
        (["--flops", "1e15", "lrr=3"], "did you mean lr"),
        (["--flops", "1e15", "lr=inf"], "'lr'"),
        (["--flops", "1e15", "max_steps=10"], "the plan sets the training budget"),
        (["--flops", "1e15", "nonsense"], "key=value"),
        (["--flops", "1e27"], "beyond the loop limit of 1024"),
        (["--flops", "1e300"], "beyond the loop limit of 1024"),
    ],
)
def test_plan_refuses(capsys, extra, expected):
    assert expected in refuse(["plan", *extra], capsys)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such fit file"),
        ("{not json", "not valid JSON"),
        ("{}", "not a `parcae fit isoflop` fit.json"),
        ("[1]", "not a `parcae fit isoflop` fit.json"),
        ("[" * 100_000, "not valid JSON (nested too deeply)"),
        ("\udcff", "not valid JSON"),
    ],
)
def test_plan_refuses_a_bad_fit_file(tmp_path, capsys, content, expected):
    fit = tmp_path / "fit.json"
    if content is not None:
        fit.write_bytes(content.encode("utf-8", "surrogateescape"))
    argv = ["plan", "--flops", "1e15", "--fit", str(fit)]
    assert expected in refuse(argv, capsys, protect=[fit])


def _fit_json(**changes) -> str:
    """A fit.json as `parcae fit isoflop` writes it, with `changes` (dotted keys) applied."""
    from parcae.scaling.isoflop import BudgetOptimum, IsoflopFit

    budget = BudgetOptimum(1e15, 4.0, 1e6, 3.0, (1, 0, 3), (1, 0, 3), (1, 8), (1e5, 1e7), 3, False)
    data = IsoflopFit((budget,), 0.4, 4e-6, None, 0.8, 1e-6, None, 3, 0, 0).to_dict()
    for key, value in changes.items():
        node, *path = key.split(".")
        target = data if not path else data[node]
        target[path[-1] if path else node] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(), None),
        ({"mu_rec.exponent": float("inf")}, "the power laws are not finite"),
        ({"tokens.prefactor": float("nan")}, "the power laws are not finite"),
        ({"budgets": []}, "no budgets"),
        ({"bootstrap.resamples": -5}, "a negative count"),
        ({"points": "many"}, "not an isoflop fit"),
    ],
    ids=["valid", "infinite exponent", "NaN prefactor", "no budgets", "negative resamples", "text"],
)
def test_plan_checks_every_field_of_a_fit_file(tmp_path, capsys, changes, expected):
    fit = tmp_path / "fit.json"
    fit.write_text(_fit_json(**changes))
    argv = ["plan", "--flops", "1e15", "--fit", str(fit)]
    if expected is None:  # the unchanged file plans
        assert main(argv) == 0
        return
    assert expected in refuse(argv, capsys, protect=[fit])


def test_an_output_path_the_system_refuses_is_one_line(capsys):
    """/proc takes no new files: the write fails, in one line (any command, from the CLI)."""
    line = refuse(["plan", "--flops", "1e15", "--write-config", "/proc/parcae-plan.yaml"], capsys)
    assert "/proc/parcae-plan.yaml" in line


@pytest.mark.parametrize("target", ["a_dir", "a_file/run.yaml"])
def test_plan_refuses_a_config_path_it_cannot_write(tmp_path, capsys, target):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("precious")
    argv = ["plan", "--flops", "1e15", "--write-config", str(tmp_path / target)]
    assert "--write-config" in refuse(argv, capsys, protect=[tmp_path])


@pytest.mark.parametrize(
    "rows, expected",
    [
        (None, "no such results file"),
        ("a,b\n1,2\n", "missing column(s)"),
        (HEADER, "no finished points"),
        (HEADER + "1e15,2,0,1e6,3.1,failed\n", "no finished points"),
        (HEADER + "1e15,2,0,1e6,nan,done\n", ":2: val_loss is not a finite number"),
        (HEADER + "1e15,2,0,lots,3.1,done\n", ":2: tokens is not a finite number"),
        (HEADER + "-1e15,2,0,1e6,3.1,done\n", ":2: flops_budget must be positive"),
        (HEADER + "1e15,0,0,1e6,3.1,done\n", ":2: mean_recurrence must be positive"),
        ("\xff\xfe" + HEADER, "not a UTF-8 CSV table"),
        (HEADER + "1e15,2,0,1e6,inf,done\n", ":2: val_loss is not a finite number"),
    ],
)
def test_fit_isoflop_refuses_a_bad_table(tmp_path, capsys, rows, expected):
    table = tmp_path / "results.csv"
    if rows is not None:
        table.write_bytes(rows.encode("latin-1") if rows.startswith("\xff") else rows.encode())
    assert expected in refuse(["fit", "isoflop", str(table)], capsys, protect=[tmp_path])


def _sweep(tmp_path: Path, data_dir: Path, **changes) -> Path:
    sweep = dict(
        overrides=dict(data=str(data_dir), tensorboard=False, progress=False, device="cpu"),
        grid=dict(flops_budget=[4e8], mean_recurrence=[1, 2]),
        out_dir=str(tmp_path / "sweep"),
    )
    for key, value in changes.items():
        if value is None:
            sweep.pop(key, None)
        else:
            sweep[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(colour="blue"), "unknown sweep key 'colour'"),
        (dict(grid=[1, 2]), "'grid' must map"),
        (dict(grid=dict(flops_budget=[4e8], mean_recurrence=[1], depth=[3])), "unknown grid key"),
        (dict(grid=dict(mean_recurrence=[1])), "the grid needs 'flops_budget'"),
        (dict(grid=dict(flops_budget=[4e8])), "the grid needs 'mean_recurrence'"),
        (dict(grid=dict(flops_budget=[], mean_recurrence=[1])), "must be a non-empty list"),
        (dict(grid=dict(flops_budget=[-4e8], mean_recurrence=[1])), "not a number in (0, "),
        (dict(grid=dict(flops_budget=["inf"], mean_recurrence=[1])), "not a number in (0, "),
        (dict(grid=dict(flops_budget=[True], mean_recurrence=[1])), "flops_budget True"),
        (dict(grid=dict(flops_budget=[1e30], mean_recurrence=[1])), "not a number in (0, 1e+24]"),
        (dict(grid=dict(flops_budget=[4e8], mean_recurrence=[0])), "must be an integer in [1, "),
        (dict(grid=dict(flops_budget=[4e8], mean_recurrence=[1.5])), "must be an integer in"),
        (dict(grid=dict(flops_budget=[4e8], mean_recurrence=[147_896])), "in [1, 1024]"),
        (
            dict(grid=dict(flops_budget=[4e8], mean_recurrence=[1], seed=[-1])),
            "must be an integer in [0, ",
        ),
        (
            dict(
                grid=dict(flops_budget=[4e8 + i for i in range(1000)], mean_recurrence=[1] * 1000)
            ),
            "1000000 points, over the limit of 10000",
        ),
        (dict(overrides=[1]), "'overrides' must be a mapping"),
        (dict(overrides=dict(lrr=0.1)), "did you mean lr"),
        (dict(overrides=dict(resume="yes")), "'resume': must be true or false"),
        (dict(overrides=dict(model="gpt-tiny")), "looped model"),
        (dict(base="missing.yaml"), "no config file"),
    ],
)
def test_sweep_refuses_a_bad_sweep_file(data_dir, tmp_path, capsys, changes, expected):
    path = _sweep(tmp_path, data_dir, **changes)
    assert expected in refuse(["sweep", str(path)], capsys, protect=[path, data_dir])
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "no sweep file"),
        ("grid: [1", "not valid YAML"),
        ("- 1\n", "mapping"),
        (ALIAS_BOMB, "aliases (*name) are not allowed"),
        ("grid: " + "[" * 100_000, "not valid YAML"),
        (b"\xff\xfe\x00grid", "not valid YAML"),
    ],
    ids=["missing", "bad YAML", "a list", "alias bomb", "deep", "binary"],
)
def test_sweep_refuses_a_missing_or_malformed_file(tmp_path, capsys, text, expected):
    path = tmp_path / "sweep.yaml"
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert expected in refuse(["sweep", str(path)], capsys, protect=[tmp_path])


@pytest.mark.parametrize(
    "extra, expected",
    [(["--workers", "0"], "--workers"), (["--launcher", "slurm"], "invalid choice")],
)
def test_sweep_refuses_bad_options(data_dir, tmp_path, capsys, extra, expected):
    path = _sweep(tmp_path, data_dir)
    assert expected in refuse(["sweep", str(path), *extra], capsys, protect=[path])
