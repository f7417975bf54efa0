"""`parcae eval` and `parcae fit depth` end to end on a tiny model: a DCLM-style bundle made
here, the BIG-bench fixtures, validation bpb, the results JSON, and bad input (one line, exit 2)."""

import json
import math

import pytest
import yaml

from parcae.cli import main
from parcae.data.prepare import prepare_dataset
from parcae.data.tokenizer import Tokenizer
from parcae.eval import run as eval_run
from parcae.eval.core import evaluate_task
from parcae.eval.selection import resolve_tasks
from parcae.eval.tasks import load_task
from parcae.model import from_pretrained
from tests.conftest import BIGBENCH_DIR, SHAKESPEARE_DIR

BUNDLE_TASKS = {
    "mc_task": (
        "multiple_choice",
        [
            {
                "query": f"Who speaks line {i}?",
                "choices": ["the king", "a fool", "my lord"],
                "gold": i % 3,
            }
            for i in range(6)
        ],
    ),
    "schema_task": (
        "schema",
        [
            {
                "context_options": ["The king said", "The fool said"],
                "continuation": "good night",
                "gold": i % 2,
            }
            for i in range(4)
        ],
    ),
    "lm_task": (
        "language_modeling",
        [{"context": f"And {w} is", "continuation": " the"} for w in ("this", "that", "he")],
    ),
}


def write_bundle(directory, tasks=BUNDLE_TASKS, baselines=None):
    """A bundle with core.yaml (every task) and core_extended.yaml (the first)."""
    entries = []
    for label, (kind, items) in tasks.items():
        path = directory / "eval_data" / "misc" / f"{label}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
        entries.append(
            dict(
                label=label,
                dataset_uri=f"misc/{label}.jsonl",
                num_fewshot=[1],
                icl_task_type=kind,
                continuation_delimiter=" ",
            )
        )
    (directory / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": entries}))
    (directory / "core_extended.yaml").write_text(yaml.safe_dump({"icl_tasks": entries[:1]}))
    baselines = baselines or {"mc_task": 100 / 3, "schema_task": 50, "lm_task": 0}
    rows = "".join(f"{label},{value}\n" for label, value in baselines.items())
    (directory / "eval_meta_data.csv").write_text("Eval Task,Random baseline\n" + rows)
    return directory


@pytest.fixture
def bundle(tmp_path):
    return write_bundle(tmp_path / "bundle")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("prepared")
    tokenizer.save(directory)
    prepare_dataset(str(SHAKESPEARE_DIR), directory, directory, val_fraction=0.05, progress=False)
    return directory


@pytest.fixture(autouse=True)
def offline_bigbench(tmp_path, monkeypatch):
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PARCAE_BIGBENCH_DIR", str(BIGBENCH_DIR))
    monkeypatch.delenv("PARCAE_EVAL_BUNDLE", raising=False)


def eval_cli(*args) -> int:
    return main(["eval", "--no-progress", "--batch-size", "4", *map(str, args)])


def test_eval_writes_the_table_and_the_results_json(model_dir, bundle, prepared, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = eval_cli(
        "--model",
        model_dir,
        "--tasks",
        "bpb,core,bigbench_operators",
        "--depths",
        "1..3",
        "--bundle",
        bundle,
        "--data",
        prepared,
        "--bpb-batches",
        "2",
        "--max-per-task",
        "6",
        "--out",
        out,
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["complete"] and results["looped"] and results["depths"] == ["1", "2", "3"]
    labels = ["mc_task", "schema_task", "lm_task", "bigbench_operators"]
    assert [(r["task"], r["depth"]) for r in results["results"]] == [
        (label, depth) for label in labels for depth in (1, 2, 3)
    ]
    assert results["core_tasks"] == labels
    for depth in ("1", "2", "3"):
        centered = [r["centered"] for r in results["results"] if str(r["depth"]) == depth]
        assert results["core"][depth] == pytest.approx(sum(centered) / 4)
        assert math.isfinite(results["bpb"][depth]) and results["bpb"][depth] > 0
    # the CLI's numbers are the Python API's
    model = from_pretrained(model_dir)
    [mc_spec] = [s for s in resolve_tasks("core", str(bundle)).tasks if s.label == "mc_task"]
    direct = evaluate_task(
        model, Tokenizer.load(model_dir), load_task(mc_spec, 6), [1, 2, 3], progress=False
    )
    assert [r.accuracy for r in direct] == [
        r["accuracy"] for r in results["results"] if r["task"] == "mc_task"
    ]
    table = capsys.readouterr().out
    assert "mc_task" in table and "CORE" in table and "bpb" in table and "T=3" in table


def test_core_extended_is_a_task_list_of_the_bundle(model_dir, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("PARCAE_EVAL_BUNDLE", str(bundle))
    out = tmp_path / "r.json"
    assert (
        eval_cli("--model", model_dir, "--tasks", "core_extended", "--depths", "2", "--out", out)
        == 0
    )
    assert [r["task"] for r in json.loads(out.read_text())["results"]] == ["mc_task"]


def test_a_fixed_depth_model_is_evaluated_once(tmp_path, gpt_model, tokenizer, bundle):
    gpt_model.save_pretrained(tmp_path / "gpt")
    tokenizer.save(tmp_path / "gpt")
    out = tmp_path / "r.json"
    code = eval_cli(
        "--model",
        tmp_path / "gpt",
        "--tasks",
        "core",
        "--depths",
        "1,2",
        "--bundle",
        bundle,
        "--out",
        out,
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["depths"] == ["fixed"] and {r["depth"] for r in results["results"]} == {None}
    assert list(results["core"]) == ["fixed"]


def test_fit_depth_from_a_saved_results_file(tmp_path, capsys):
    depths = range(1, 17)
    results = {
        "model": "m",
        "looped": True,
        "mean_recurrence": 4,
        "depths": [str(t) for t in depths],
        "results": [],
        "bpb": {str(t): 2.0 + 0.5 * math.exp(-0.4 * t) for t in depths},
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    assert main(["fit", "depth", str(path), "--out", str(tmp_path / "fits")]) == 0
    fit = json.loads((tmp_path / "fits" / "r-fit.json").read_text())
    assert fit["bpb"]["l_inf"] == pytest.approx(2.0, rel=1e-3)
    assert fit["bpb"]["z"] == pytest.approx(0.4, rel=1e-3)
    assert (tmp_path / "fits" / "r-bpb-law.png").read_bytes()[:4] == b"\x89PNG"
    assert "L_inf" in capsys.readouterr().out
    assert json.loads(path.read_text()) == results  # the results file is left as it was


def test_eval_fit_fits_bpb_over_depths(model_dir, prepared, tmp_path):
    out = tmp_path / "r.json"
    code = eval_cli(
        "--model",
        model_dir,
        "--tasks",
        "bpb",
        "--depths",
        "1..6",
        "--data",
        prepared,
        "--bpb-batches",
        "1",
        "--fit",
        "--out",
        out,
    )
    assert code == 0
    results = json.loads(out.read_text())
    law = results["fit"]["bpb"]
    assert law["depths"] == list(range(1, 7))
    predicted = [law["l_inf"] + law["Z"] * math.exp(-law["z"] * t) for t in range(1, 7)]
    measured = [results["bpb"][str(t)] for t in range(1, 7)]
    mean = sum(measured) / 6
    r2 = 1 - sum((m - p) ** 2 for m, p in zip(measured, predicted)) / sum(
        (m - mean) ** 2 for m in measured
    )
    assert law["r2"] == pytest.approx(r2, abs=1e-6)
    assert (tmp_path / "r-bpb-law.png").is_file()


def test_a_run_that_stops_half_way_leaves_its_results(model_dir, bundle, tmp_path, monkeypatch):
    calls = []
    real = eval_run.evaluate_task

    def second_task_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_run, "evaluate_task", second_task_interrupted)
    out = tmp_path / "r.json"
    assert (
        eval_cli("--model", model_dir, "--tasks", "core", "--bundle", bundle, "--out", out) == 130
    )
    results = json.loads(out.read_text())
    assert not results["complete"]
    assert {r["task"] for r in results["results"]} == {"mc_task"}


# ------------------------------------------------------------------ bad input


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("parcae: error:"), err
    return err


def broken_bundle(tmp_path, label, item):
    tasks = dict(BUNDLE_TASKS)
    kind, items = tasks[label]
    tasks[label] = (kind, [*items[:2], item, *items[2:]])
    return write_bundle(tmp_path / "broken", tasks)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "core"], "need a DCLM eval bundle"),
        (["--tasks", "core", "--bundle", "/no/such/bundle"], "no such bundle directory"),
        (["--tasks", "bigbench_operater"], "did you mean bigbench_operators"),
        (["--tasks", "bpb", "--depths", "0"], "positive integers"),
        (["--tasks", "bpb", "--depths", "2,x"], "not an integer"),
        (["--tasks", "bpb", "--depths", "4..2"], "low..high"),
        (["--tasks", "bpb"], "bpb needs validation data"),
        (["--tasks", "bigbench_operators", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_requests_get_one_line(model_dir, args, message, capsys):
    assert eval_cli("--model", model_dir, *args) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize(
    "label, item, message",
    [
        ("mc_task", {"query": "q", "choices": ["a", "b"]}, "mc_task.jsonl:3: missing field 'gold'"),
        (
            "mc_task",
            {"query": "q", "choices": ["a", "b"], "gold": 2},
            "mc_task.jsonl:3: gold 2 is out of range",
        ),
        (
            "schema_task",
            {"context_options": ["a", "b"], "gold": 0},
            "schema_task.jsonl:3: missing field 'continuation'",
        ),
        (
            "lm_task",
            {"context": "c", "continuation": ""},
            "lm_task.jsonl:3: field 'continuation' is empty",
        ),
    ],
)
def test_a_malformed_item_is_named_by_file_and_line(
    model_dir, tmp_path, label, item, message, capsys
):
    bundle = broken_bundle(tmp_path, label, item)
    out = tmp_path / "r.json"
    assert eval_cli("--model", model_dir, "--tasks", "core", "--bundle", bundle, "--out", out) == 2
    assert message in error_line(capsys)
    assert not out.exists()  # refused before any work


def test_a_missing_task_file_and_baseline_are_named(model_dir, bundle, capsys):
    (bundle / "eval_data" / "misc" / "lm_task.jsonl").unlink()
    assert eval_cli("--model", model_dir, "--tasks", "core", "--bundle", bundle) == 2
    assert "task 'lm_task': no data file" in error_line(capsys)
    write_bundle(bundle, baselines={"mc_task": 25})
    assert eval_cli("--model", model_dir, "--tasks", "core", "--bundle", bundle) == 2
    assert "'schema_task' has no random baseline" in error_line(capsys)


def test_a_model_without_a_tokenizer_is_refused(parcae_model, tmp_path, capsys):
    parcae_model.save_pretrained(tmp_path / "bare")
    assert eval_cli("--model", tmp_path / "bare", "--tasks", "bigbench_operators") == 2
    assert "has no tokenizer.json" in error_line(capsys)


def test_fit_refuses_a_fixed_depth_result_and_too_few_depths(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            {"model": "m", "looped": True, "depths": ["1", "2"], "bpb": {"1": 2.0, "2": 1.9}}
        )
    )
    assert main(["fit", "depth", str(path)]) == 2
    assert "at least 3 depths" in error_line(capsys)
    path.write_text(
        json.dumps({"model": "g", "looped": False, "depths": ["fixed"], "bpb": {"fixed": 2.0}})
    )
    assert main(["fit", "depth", str(path)]) == 2
    assert "fixed-depth model has no test-time depth law" in error_line(capsys)
