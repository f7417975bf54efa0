"""The six BIG-bench tasks of the CORE metric, converted into a DCLM-style eval bundle.

Origin: `bigbench/benchmark_tasks/<task>/task.json` (and `<task>/<subtask>/task.json`) of the
`bigbench==1.0.0` source distribution on PyPI (358 MB, pinned by sha256), from
<https://github.com/google/BIG-bench>, licensed under Apache-2.0. `bigbench_dir()` finds the
task files: `$PARCAE_BIGBENCH_DIR` (a folder with one directory per task, offline use and tests),
else `$PARCAE_CACHE/bigbench`, else a fresh download that keeps only these tasks' task.json files.
The sdist is fetched from its PyPI file URL, not with `pip download`: its setup.py declares a
direct-URL dependency (`bleurt @ file://...`), and pip refuses such a distribution from PyPI
even with `--no-deps`.

Source format (BIG-bench JSON tasks): a task.json holds `examples`, each with an `input` string
and either `target` (a string or a list of strings) or `target_scores` (an object choice ->
score); optional `example_input_prefix` (default "\\nQ: ") and `example_output_prefix` (default
"\\nA: "). A subtask is a subdirectory with its own task.json and its own prefixes.

Conversion rules:
- A task's examples are its own (usually none), then those of its subtasks in sorted order.
- `target` (when present) -> `language_modeling` item {"context", "continuation"}; a list
  target gives its first string.
- `target_scores` -> `multiple_choice` item {"query", "choices", "gold"}: the choices in the
  object's order, gold the index of the highest score (the first one on ties).
- A task with both kinds of examples is refused.
- The context or query is `example_input_prefix.lstrip() + input + example_output_prefix.rstrip()`;
  the task's continuation delimiter is the whitespace that rstrip removed (" " when its files
  disagree). E.g. "\\nLanguage: " gives a query ending in "\\nLanguage:" and the delimiter " ".
- The task's `task_prefix` (an instruction before the few-shot examples) is left out: the DCLM
  item formats have no field for it.
- Random baseline, in percent: 100 * mean(1 / len(choices)) for multiple choice, 0 for language
  modelling.

Bundle layout (`convert_bigbench`), as DCLM's eval bundle:
- `bigbench.yaml`: {"icl_tasks": [{"label": "bigbench_<task>", "dataset_uri":
  "bigbench/bigbench_<task>.jsonl", "num_fewshot": [n], "icl_task_type", "continuation_delimiter"},
  ...]}, dataset_uri relative to `eval_data/`;
- `eval_data/bigbench/bigbench_<task>.jsonl`: the items, one JSON object a line
  (`parcae.eval.tasks.read_items`);
- `eval_meta_data.csv`: header `Eval Task,Random baseline`, one row per label;
- `bigbench_source.json`: {"source", "converter_version", "tasks", "num_fewshot"}, what it was
  converted from.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from parcae.data.recipes import cache_root, fetch_sdist, local_or_fetched
from parcae.errors import DataError
from parcae.eval.tasks import LANGUAGE_MODELING, MULTIPLE_CHOICE

BIGBENCH_TASKS = (
    "qa_wikidata",
    "dyck_languages",
    "cs_algorithms",
    "operators",
    "repeat_copy_logic",
    "language_identification",
)
BIGBENCH_ENV = "PARCAE_BIGBENCH_DIR"
BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
BIGBENCH_URL = (
    "https://files.pythonhosted.org/packages/95/f8/"
    "c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/bigbench-1.0.0.tar.gz"
)
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
BIGBENCH_MEMBERS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
CONVERTER_VERSION = 1
NUM_FEWSHOT = 10
BUNDLE_YAML = "bigbench.yaml"
BUNDLE_SOURCE = "bigbench_source.json"
DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "


def _missing_tasks(directory: Path, tasks: tuple[str, ...] = BIGBENCH_TASKS) -> str | None:
    """What `directory` lacks of one `<task>/task.json` per task, or None."""
    missing = [task for task in tasks if not (directory / task / "task.json").is_file()]
    return f"no task.json for {', '.join(missing)}" if missing else None


def _select_task_file(name: str) -> str | None:
    """`<task>/task.json` or `<task>/<subtask>/task.json` of a BIG-bench task, relative."""
    relative = name.removeprefix(BIGBENCH_MEMBERS)
    parts = relative.split("/")
    keep = (
        relative != name
        and len(parts) in (2, 3)
        and parts[0] in BIGBENCH_TASKS
        and parts[-1] == "task.json"
    )
    return relative if keep else None


def bigbench_dir() -> Path:
    """Directory with one directory per BIG-bench task of `BIGBENCH_TASKS`:
    `$PARCAE_BIGBENCH_DIR`, the cache, or a fresh download of the sdist."""
    return local_or_fetched(
        BIGBENCH_ENV,
        "bigbench",
        _missing_tasks,
        lambda directory: fetch_sdist(
            BIGBENCH_REQUIREMENT,
            BIGBENCH_SDIST,
            BIGBENCH_SHA256,
            _select_task_file,
            _missing_tasks,
            directory,
            BIGBENCH_ENV,
            BIGBENCH_URL,
        ),
        f"{BIGBENCH_REQUIREMENT} (358 MB)",
    )


def _read_task_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _convert_example(
    example: object, where: str, input_prefix: str, output_prefix: str
) -> tuple[str, dict]:
    """(task type, jsonl record) of one BIG-bench example."""
    if not isinstance(example, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(example).__name__}")
    text = example.get("input")
    if not isinstance(text, str):
        raise DataError(f"{where}: no 'input' string")
    prompt = input_prefix.lstrip() + text + output_prefix.rstrip()
    target, scores = example.get("target"), example.get("target_scores")
    if isinstance(target, list) and target and all(isinstance(t, str) for t in target):
        target = target[0]
    if isinstance(target, str):
        return LANGUAGE_MODELING, {"context": prompt, "continuation": target}
    if target is not None:
        raise DataError(f"{where}: 'target' must be a string or a list of strings")
    if scores is None:
        raise DataError(f"{where}: neither 'target' nor 'target_scores'")
    valid = isinstance(scores, dict) and all(
        isinstance(s, int | float) and not isinstance(s, bool) for s in scores.values()
    )
    if not valid or len(scores) < 2:
        raise DataError(f"{where}: 'target_scores' must map at least two choices to numbers")
    values = list(scores.values())
    return MULTIPLE_CHOICE, {
        "query": prompt,
        "choices": list(scores),
        "gold": values.index(max(values)),
    }


def _convert_task(directory: Path) -> tuple[str, str, list[dict]]:
    """(task type, continuation delimiter, jsonl records) of the BIG-bench task in `directory`:
    its own task.json, then its subtasks' (subdirectories with a task.json) in sorted order."""
    paths = [directory / "task.json"]
    paths += sorted(p / "task.json" for p in directory.iterdir() if (p / "task.json").is_file())
    kinds, delimiters, records = set(), set(), []
    for number, path in enumerate(paths):
        task = _read_task_file(path)
        examples = task.get("examples", [])
        if not isinstance(examples, list):
            raise DataError(f"{path}: 'examples' must be a list")
        if not examples:
            if number == 0 and len(paths) > 1:
                continue  # a parent task whose examples are all in its subtasks
            raise DataError(f"{path}: no examples")
        input_prefix = task.get("example_input_prefix", DEFAULT_INPUT_PREFIX)
        output_prefix = task.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX)
        if not isinstance(input_prefix, str) or not isinstance(output_prefix, str):
            raise DataError(f"{path}: the example prefixes must be strings")
        delimiters.add(output_prefix[len(output_prefix.rstrip()) :])
        for index, example in enumerate(examples):
            where = f"{path}: example {index}"
            kind, record = _convert_example(example, where, input_prefix, output_prefix)
            kinds.add(kind)
            records.append(record)
    if len(kinds) > 1:
        raise DataError(
            f"{directory}: task {directory.name} mixes 'target' and 'target_scores' examples"
        )
    delimiter = delimiters.pop() if len(delimiters) == 1 else " "
    return kinds.pop(), delimiter, records


def _random_baseline(task_type: str, records: list[dict]) -> float:
    """Accuracy of guessing, in percent: 100 * mean(1 / len(choices)) for multiple choice, 0
    for language modelling."""
    if task_type != MULTIPLE_CHOICE:
        return 0.0
    return 100 * sum(1 / len(record["choices"]) for record in records) / len(records)


def _install(staging: Path, out: Path) -> None:
    """Rename the finished `staging` to `out`, replacing a previous bundle there."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
    try:
        os.replace(out, old / out.name)
        os.replace(staging, out)
    finally:
        shutil.rmtree(old, ignore_errors=True)


def convert_bigbench(
    source: Path, out: Path, tasks: tuple[str, ...] = BIGBENCH_TASKS, num_fewshot: int = NUM_FEWSHOT
) -> Path:
    """Convert the BIG-bench `tasks` in `source` into a bundle at `out` (layout: module
    docstring), written atomically; a previous bundle at `out` is replaced. Returns `out`."""
    source, out = Path(source), Path(out)
    problem = _missing_tasks(source, tasks)
    if problem:
        raise DataError(f"{source}: {problem}")
    if out.exists() and not (out / BUNDLE_YAML).is_file() and (out.is_file() or any(out.iterdir())):
        raise DataError(f"{out}: not empty and not a BIG-bench bundle; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (staging / "eval_data" / "bigbench").mkdir(parents=True)
        icl_tasks, baselines = [], []
        for name in tasks:
            task_type, delimiter, records = _convert_task(source / name)
            label = f"bigbench_{name}"
            uri = f"bigbench/{label}.jsonl"
            with (staging / "eval_data" / uri).open("w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            icl_tasks.append(
                {
                    "label": label,
                    "dataset_uri": uri,
                    "num_fewshot": [num_fewshot],
                    "icl_task_type": task_type,
                    "continuation_delimiter": delimiter,
                }
            )
            baselines.append((label, round(_random_baseline(task_type, records), 4)))
        (staging / BUNDLE_YAML).write_text(
            yaml.safe_dump({"icl_tasks": icl_tasks}, sort_keys=False, allow_unicode=True),
            encoding="utf-8",
        )
        with (staging / "eval_meta_data.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Eval Task", "Random baseline"])
            writer.writerows(baselines)
        stamp = _stamp(source, tasks, num_fewshot)
        (staging / BUNDLE_SOURCE).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _stamp(source: Path, tasks: tuple[str, ...], num_fewshot: int) -> dict:
    return {
        "source": str(source.resolve()),
        "converter_version": CONVERTER_VERSION,
        "tasks": list(tasks),
        "num_fewshot": num_fewshot,
    }


def bigbench_bundle(source: Path | None = None) -> Path:
    """The bundle of `BIGBENCH_TASKS` at `$PARCAE_CACHE/bundles/bigbench`, converted from
    `source` (default `bigbench_dir()`) unless it already was from that path by this
    `CONVERTER_VERSION`."""
    source = Path(source) if source is not None else bigbench_dir()
    out = cache_root() / "bundles" / "bigbench"
    try:
        stamp = json.loads((out / BUNDLE_SOURCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = None
    if stamp == _stamp(source, BIGBENCH_TASKS, NUM_FEWSHOT):
        return out
    return convert_bigbench(source, out)
