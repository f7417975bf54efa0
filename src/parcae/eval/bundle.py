"""DCLM-style eval bundles: task lists, their data and random baselines (ARCHITECTURE §5.2).

A bundle is a directory (the DCLM / nanochat `eval_bundle`):

    core.yaml               {"icl_tasks": [{label, dataset_uri, num_fewshot, icl_task_type,
                                            continuation_delimiter}, ...]}
    core_extended.yaml      another task list (any NAME.yaml is the task set NAME)
    eval_data/...jsonl      the items, at `dataset_uri` relative to eval_data/
    eval_meta_data.csv      columns "Eval Task" and "Random baseline" (in percent)

The bundle is found at `--bundle DIR` or `$PARCAE_EVAL_BUNDLE`. A task list is data: CORE is the
list in core.yaml, Core-Extended the list in core_extended.yaml.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import yaml

from parcae.errors import DataError
from parcae.eval.tasks import TASK_TYPES, TaskSpec

BUNDLE_ENV = "PARCAE_EVAL_BUNDLE"
BASELINES_FILE = "eval_meta_data.csv"
DATA_DIR = "eval_data"


def find_bundle(path: str | os.PathLike | None) -> Path:
    """The bundle directory: `path`, else `$PARCAE_EVAL_BUNDLE`."""
    where = "--bundle"
    if path is None:
        path, where = os.environ.get(BUNDLE_ENV), f"${BUNDLE_ENV}"
    if not path:
        raise DataError(
            f"these tasks need a DCLM eval bundle: pass --bundle DIR or set ${BUNDLE_ENV} "
            "(see docs/ARCHITECTURE.md §5.2)"
        )
    bundle = Path(path).expanduser()
    if not bundle.is_dir():
        raise DataError(f"{where}={path}: no such bundle directory")
    return bundle


def task_sets(bundle: Path) -> list[str]:
    """The names of the bundle's task lists (its top-level *.yaml files)."""
    return sorted(path.stem for path in bundle.glob("*.yaml"))


def random_baselines(bundle: Path) -> dict[str, float]:
    """{label: random baseline as a fraction} from the bundle's CSV (percent there)."""
    path = bundle / BASELINES_FILE
    if not path.is_file():
        raise DataError(f"{path}: no random baselines file in the bundle")
    baselines = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"Eval Task", "Random baseline"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: no column {', '.join(sorted(missing))}")
        for number, row in enumerate(reader, start=2):
            try:
                baseline = float(row["Random baseline"]) / 100
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}:{number}: random baseline {row['Random baseline']!r} is not a number"
                ) from None
            if not 0 <= baseline < 1:
                raise DataError(f"{path}:{number}: random baseline must be in [0, 100) percent")
            baselines[row["Eval Task"]] = baseline
    return baselines


def _data_path(bundle: Path, uri: str) -> Path:
    """The jsonl a `dataset_uri` names: relative to eval_data/ (DCLM's `local_data/` prefix
    is that directory too)."""
    relative = uri.removeprefix("local_data/").removeprefix(f"{DATA_DIR}/")
    return bundle / DATA_DIR / relative


def _spec(entry: object, bundle: Path, baselines: dict[str, float], where: str) -> TaskSpec:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: each task must be a mapping, got {entry!r:.60}")
    for key in ("label", "dataset_uri", "icl_task_type"):
        if not isinstance(entry.get(key), str):
            raise DataError(f"{where}: task {entry.get('label', '?')!r} has no {key}")
    label, task_type = entry["label"], entry["icl_task_type"]
    if task_type not in TASK_TYPES:
        raise DataError(
            f"{where}: task {label!r} has icl_task_type {task_type!r}; "
            f"parcae scores {', '.join(TASK_TYPES)}"
        )
    shots = entry.get("num_fewshot", [0])
    shots = shots[0] if isinstance(shots, list) and shots else shots
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise DataError(f"{where}: task {label!r} has num_fewshot {entry.get('num_fewshot')!r}")
    if label not in baselines:
        raise DataError(f"{where}: task {label!r} has no random baseline in {BASELINES_FILE}")
    delimiter = entry.get("continuation_delimiter", " ")
    if not isinstance(delimiter, str):
        raise DataError(f"{where}: task {label!r} has a continuation_delimiter that is not text")
    return TaskSpec(
        label=label,
        task_type=task_type,
        data_path=_data_path(bundle, entry["dataset_uri"]),
        num_fewshot=shots,
        continuation_delimiter=delimiter,
        random_baseline=baselines[label],
    )


def read_task_set(bundle: Path, name: str) -> list[TaskSpec]:
    """The tasks of the bundle's list `name` (`name`.yaml), each with its data file checked."""
    path = bundle / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no task list {name!r} in the bundle")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    entries = document.get("icl_tasks") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty list under 'icl_tasks'")
    baselines = random_baselines(bundle)
    specs = [_spec(entry, bundle, baselines, str(path)) for entry in entries]
    for spec in specs:
        if not spec.data_path.is_file():
            raise DataError(f"{path}: task {spec.label!r}: no data file {spec.data_path}")
    return specs
