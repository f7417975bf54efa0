"""BIG-bench tasks into a DCLM-style bundle (`parcae.eval.bigbench`): the conversion of the
committed samples, where the task files come from (override, cache, sdist), and bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import tarfile

import pytest
import yaml

from parcae.data import recipes
from parcae.errors import DataError
from parcae.eval import bigbench
from parcae.eval.tasks import LANGUAGE_MODELING, MULTIPLE_CHOICE, MultipleChoiceItem, read_items
from tests.conftest import BIGBENCH_DIR

TYPES = {
    "qa_wikidata": LANGUAGE_MODELING,
    "dyck_languages": MULTIPLE_CHOICE,
    "cs_algorithms": MULTIPLE_CHOICE,
    "operators": LANGUAGE_MODELING,
    "repeat_copy_logic": LANGUAGE_MODELING,
    "language_identification": MULTIPLE_CHOICE,
}
COUNTS = {task: 20 for task in bigbench.BIGBENCH_TASKS} | {"cs_algorithms": 40}
TASK_FILES = sorted(str(path.relative_to(BIGBENCH_DIR)) for path in BIGBENCH_DIR.rglob("task.json"))


def source_examples(task: str) -> list[dict]:
    return json.loads((BIGBENCH_DIR / task / "task.json").read_text())["examples"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return bigbench.convert_bigbench(BIGBENCH_DIR, tmp_path_factory.mktemp("out") / "bundle")


@pytest.fixture(scope="module")
def icl_tasks(bundle):
    return {
        entry["label"]: entry
        for entry in yaml.safe_load((bundle / "bigbench.yaml").read_text())["icl_tasks"]
    }


def items(bundle, icl_tasks, task):
    entry = icl_tasks[f"bigbench_{task}"]
    return read_items(bundle / "eval_data" / entry["dataset_uri"], entry["icl_task_type"])


def copy_source(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(BIGBENCH_DIR, source)
    return source


def test_bundle_lists_the_six_tasks_with_their_types(bundle, icl_tasks):
    assert list(icl_tasks) == [f"bigbench_{task}" for task in bigbench.BIGBENCH_TASKS]
    for task, task_type in TYPES.items():
        entry = icl_tasks[f"bigbench_{task}"]
        assert entry == {
            "label": f"bigbench_{task}",
            "dataset_uri": f"bigbench/bigbench_{task}.jsonl",
            "num_fewshot": [10],
            "icl_task_type": task_type,
            "continuation_delimiter": " ",
        }
    assert sorted(path.name for path in bundle.iterdir()) == [
        "bigbench.yaml",
        "bigbench_source.json",
        "eval_data",
        "eval_meta_data.csv",
    ]


@pytest.mark.parametrize("task", bigbench.BIGBENCH_TASKS)
def test_every_task_file_reads_back_with_its_type(bundle, icl_tasks, task):
    assert len(items(bundle, icl_tasks, task)) == COUNTS[task]


def test_multiple_choice_items_follow_the_source(bundle, icl_tasks):
    example = source_examples("language_identification")[0]
    item = items(bundle, icl_tasks, "language_identification")[0]
    assert item.query == "Sentence: " + example["input"] + "\nLanguage:"
    assert item.choices == tuple(example["target_scores"])
    assert len(item.choices) == 11 and example["target_scores"][item.choices[item.gold]] == 1
    assert (item.gold, item.choices[item.gold]) == (10, "Oksapmin")


def test_gold_is_the_first_highest_score(tmp_path):
    source = copy_source(tmp_path)
    scores = {"a": 0.2, "b": 0.5, "c": 0.5, "d": 0}
    path = source / "dyck_languages" / "task.json"
    path.write_text(json.dumps({"examples": [{"input": "x", "target_scores": scores}]}))
    out = bigbench.convert_bigbench(source, tmp_path / "out")
    item = read_items(out / "eval_data/bigbench/bigbench_dyck_languages.jsonl", MULTIPLE_CHOICE)[0]
    assert (item.query, item.choices, item.gold) == ("Q: x\nA:", ("a", "b", "c", "d"), 1)


def test_subtasks_are_merged_in_sorted_order(bundle, icl_tasks):
    merged = items(bundle, icl_tasks, "cs_algorithms")
    lcs = source_examples("cs_algorithms/lcs")
    parentheses = source_examples("cs_algorithms/valid_parentheses")
    assert merged[0].query == f"Strings: {lcs[0]['input']}\nLength of longest common subsequence:"
    assert merged[0].choices == tuple(str(n) for n in range(10)) and merged[0].gold == 0
    assert merged[20].query == f"Sequence: {parentheses[0]['input']}\nValid/Invalid?"
    assert merged[20].choices == ("Valid", "Invalid") and merged[20].gold == 1


def test_language_modeling_items_follow_the_source(bundle, icl_tasks):
    wikidata = items(bundle, icl_tasks, "qa_wikidata")[0]
    assert wikidata.context == 'The genre of "Weird Al" Yankovic is'
    assert wikidata.continuation == "comedy"  # the first of ["comedy", "parody"]
    operators = items(bundle, icl_tasks, "operators")[0]
    assert (operators.context, operators.continuation) == ("op i is i.\nop 17 =", "17")
    copy = items(bundle, icl_tasks, "repeat_copy_logic")[0]  # the default "\nQ: ", "\nA: "
    assert copy.context == "Q: Repeat 5 times hello world\nA:"


@pytest.mark.parametrize(
    ("lcs_prefix", "delimiter"), [("\nLength:\n", "\n"), ("\nLength: ", " "), ("\nLength:", " ")]
)
def test_the_delimiter_is_the_shared_trailing_whitespace(tmp_path, lcs_prefix, delimiter):
    source = copy_source(tmp_path)
    for subtask, prefix in (("lcs", lcs_prefix), ("valid_parentheses", "\nValid?\n")):
        path = source / "cs_algorithms" / subtask / "task.json"
        task = json.loads(path.read_text())
        path.write_text(json.dumps(task | {"example_output_prefix": prefix}))
    out = bigbench.convert_bigbench(source, tmp_path / "out")
    entry = yaml.safe_load((out / "bigbench.yaml").read_text())["icl_tasks"][2]
    assert entry["label"] == "bigbench_cs_algorithms"
    assert entry["continuation_delimiter"] == delimiter
    merged = read_items(out / "eval_data" / entry["dataset_uri"], MULTIPLE_CHOICE)
    assert merged[0].query.endswith("\nLength:") and merged[20].query.endswith("\nValid?")


def test_random_baseline_is_the_mean_chance_in_percent(bundle, icl_tasks):
    with (bundle / "eval_meta_data.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["Eval Task", "Random baseline"]
    baselines = {label: float(value) for label, value in rows[1:]}
    assert list(baselines) == list(icl_tasks)
    for task in bigbench.BIGBENCH_TASKS:
        loaded = items(bundle, icl_tasks, task)
        chance = [1 / len(i.choices) for i in loaded if isinstance(i, MultipleChoiceItem)]
        expected = 100 * sum(chance) / len(loaded)
        assert baselines[f"bigbench_{task}"] == pytest.approx(expected, abs=1e-4)
    assert baselines["bigbench_cs_algorithms"] == 30.0  # 20 of 10 choices, 20 of 2
    assert baselines["bigbench_qa_wikidata"] == 0.0


def test_the_directory_override_is_used(monkeypatch):
    monkeypatch.setenv(bigbench.BIGBENCH_ENV, str(BIGBENCH_DIR))
    assert bigbench.bigbench_dir() == BIGBENCH_DIR


def test_an_override_without_a_task_is_refused(tmp_path, monkeypatch):
    source = copy_source(tmp_path)
    shutil.rmtree(source / "operators")
    monkeypatch.setenv(bigbench.BIGBENCH_ENV, str(source))
    with pytest.raises(DataError, match=r"PARCAE_BIGBENCH_DIR=.*: no task.json for operators"):
        bigbench.bigbench_dir()


def fake_sdist(tmp_path):
    """A small tar.gz laid out like the bigbench sdist: the samples, plus files to leave out."""
    path = tmp_path / "fake" / bigbench.BIGBENCH_SDIST
    path.parent.mkdir()
    members = {
        f"{bigbench.BIGBENCH_MEMBERS}{name}": (BIGBENCH_DIR / name).read_bytes()
        for name in TASK_FILES
    }
    members[f"{bigbench.BIGBENCH_MEMBERS}other_task/task.json"] = b"{}"
    members[f"{bigbench.BIGBENCH_MEMBERS}operators/README.md"] = b"# operators"
    members[f"{bigbench.BIGBENCH_MEMBERS}cs_algorithms/lcs/results.json"] = b"{}"
    members["bigbench-1.0.0/setup.py"] = b""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    """The cache in tmp_path, no override, and the sdist URL pointing at a fake sdist (a file://
    URL, so that nothing is fetched from the network)."""
    sdist = fake_sdist(tmp_path)
    monkeypatch.delenv(bigbench.BIGBENCH_ENV, raising=False)
    monkeypatch.setenv(recipes.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(bigbench, "BIGBENCH_URL", sdist.as_uri())
    return sdist


def test_the_download_extracts_only_the_six_tasks(fake_download, tmp_path, monkeypatch, capsys):
    checksum = hashlib.sha256(fake_download.read_bytes()).hexdigest()
    monkeypatch.setattr(bigbench, "BIGBENCH_SHA256", checksum)
    directory = bigbench.bigbench_dir()
    assert directory == tmp_path / "cache" / "bigbench"
    assert "downloading bigbench==1.0.0" in capsys.readouterr().err
    extracted = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    assert extracted == TASK_FILES
    assert (directory / "operators" / "task.json").read_bytes() == (
        BIGBENCH_DIR / "operators" / "task.json"
    ).read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["bigbench"]  # no leftovers
    fake_download.unlink()
    assert bigbench.bigbench_dir() == directory  # the cache, no second download


def test_a_download_with_a_wrong_checksum_is_refused(fake_download, tmp_path):
    with pytest.raises(DataError, match="sha256 does not match bigbench==1.0.0"):
        bigbench.bigbench_dir()
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_download_names_the_override(fake_download, tmp_path):
    fake_download.unlink()
    with pytest.raises(DataError, match=r"could not download file:.*set \$PARCAE_BIGBENCH_DIR"):
        bigbench.bigbench_dir()
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_pip_download_names_the_override(tmp_path, monkeypatch):
    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(recipes.subprocess, "run", failing_pip)
    with pytest.raises(DataError, match=r"could not download x==1 \(ERROR: No matching.*\$X_DIR"):
        recipes.pip_download("x==1", "x-1.tar.gz", tmp_path, "X_DIR")


def test_a_task_mixing_both_kinds_is_refused(tmp_path):
    source = copy_source(tmp_path)
    path = source / "operators" / "task.json"
    task = json.loads(path.read_text())
    task["examples"].append({"input": "op 1", "target_scores": {"1": 1, "2": 0}})
    path.write_text(json.dumps(task))
    with pytest.raises(DataError, match="task operators mixes 'target' and 'target_scores'"):
        bigbench.convert_bigbench(source, tmp_path / "out")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON file"),
        ('{"name": "operators"}', "no examples"),
        ('{"examples": [{"input": "a", "target": "b"}, {"target": "b"}]}', "example 1: no 'input'"),
        ('{"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}', "example 1: neither"),
        ('{"examples": [{"input": "a", "target_scores": {"b": 1}}]}', "at least two choices"),
    ],
)
def test_a_malformed_task_file_is_refused_and_nothing_is_written(tmp_path, content, message):
    source = copy_source(tmp_path)
    path = source / "operators" / "task.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        bigbench.convert_bigbench(source, tmp_path / "out" / "bundle")
    assert str(path) in str(error.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_folder_that_is_not_a_bundle_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a BIG-bench bundle"):
        bigbench.convert_bigbench(BIGBENCH_DIR, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_the_bundle_is_converted_once_per_source_and_version(tmp_path, monkeypatch):
    monkeypatch.setenv(recipes.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(bigbench.BIGBENCH_ENV, str(BIGBENCH_DIR))
    conversions = []
    convert = bigbench.convert_bigbench

    def counting(source, out):
        conversions.append(source)
        return convert(source, out)

    monkeypatch.setattr(bigbench, "convert_bigbench", counting)
    out = bigbench.bigbench_bundle()
    assert out == tmp_path / "cache" / "bundles" / "bigbench"
    assert (out / "bigbench.yaml").is_file() and conversions == [BIGBENCH_DIR]
    assert bigbench.bigbench_bundle() == out and len(conversions) == 1
    other = copy_source(tmp_path)
    (other / "operators" / "task.json").write_text(
        json.dumps({"examples": [{"input": "op 2", "target": "2"}]})
    )
    assert bigbench.bigbench_bundle(other) == out and conversions[-1] == other
    assert (
        len(read_items(out / "eval_data/bigbench/bigbench_operators.jsonl", LANGUAGE_MODELING)) == 1
    )
    assert bigbench.bigbench_bundle(other) == out and len(conversions) == 2
    monkeypatch.setattr(bigbench, "CONVERTER_VERSION", bigbench.CONVERTER_VERSION + 1)
    bigbench.bigbench_bundle(other)
    assert len(conversions) == 3
    assert [p.name for p in out.parent.iterdir()] == ["bigbench"]  # no leftovers
