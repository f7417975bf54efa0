"""What `parcae eval` is asked to run: the depths and the tasks, resolved before any work.

Depths: "1,2,4,8", ranges "1..32" (inclusive) and mixtures ("1..4,8,16"); positive integers.

Task names (comma-separated):
- `bpb`: validation loss and bits per byte;
- `bigbench`: the six BIG-bench tasks of CORE (fetched, `parcae.eval.bigbench`), or one of them
  by its label (`bigbench_operators`, ...);
- a task list of the DCLM bundle (`core`, `core_extended`: any NAME.yaml in it), or one task of
  the bundle by its label.
An unknown name is refused with the closest known names.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field

from parcae.data import synth
from parcae.errors import ConfigError, DataError
from parcae.eval import bundle as bundles
from parcae.eval.tasks import TaskSpec
from parcae.model.base import MAX_NUM_STEPS

BPB = "bpb"
BIGBENCH = "bigbench"
BUNDLE_SETS = ("core", "core_extended")  # named in help and suggestions even without a bundle


def parse_depths(text: str) -> list[int]:
    """Sorted distinct depths from "1,2,4", "1..32" or a mixture, each in [1, MAX_NUM_STEPS]
    (checked before a range is expanded)."""
    depths: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        bounds = part.split("..")
        try:
            if len(bounds) > 2:
                raise ValueError
            low, high = int(bounds[0]), int(bounds[-1])
        except ValueError:
            raise ConfigError(
                f"--depths: {part!r} is not an integer or a range like 1..32"
            ) from None
        if low <= 0 or high < low:
            raise ConfigError(f"--depths: {part!r}: depths must be positive integers, low..high")
        if high > MAX_NUM_STEPS:
            raise ConfigError(
                f"--depths: {part!r} goes above the limit of {MAX_NUM_STEPS} loop steps"
            )
        depths.update(range(low, high + 1))
    return sorted(depths)


@dataclass
class Selection:
    """The resolved request: bpb or not, the ICL tasks in order, the synthetic reasoning tasks
    (`synth:...` specs, `parcae.eval.reasoning`), and the names asked for."""

    bpb: bool = False
    tasks: list[TaskSpec] = field(default_factory=list)
    synth: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _bigbench_labels() -> list[str]:
    from parcae.eval.bigbench import BIGBENCH_TASKS

    return [f"{BIGBENCH}_{name}" for name in BIGBENCH_TASKS]


def _bigbench_specs() -> list[TaskSpec]:
    from parcae.eval.bigbench import bigbench_bundle

    return bundles.read_task_set(bigbench_bundle(), BIGBENCH)


def _bundle_or_none(path: str | None):
    if path is None and not os.environ.get(bundles.BUNDLE_ENV):
        return None
    return bundles.find_bundle(path)


def _unknown(name: str, known: list[str], have_bundle: bool) -> DataError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if not have_bundle:
        hint += f" (tasks of a DCLM bundle need --bundle DIR or ${bundles.BUNDLE_ENV})"
    return DataError(f"unknown task {name!r}{hint}")


def resolve_tasks(
    text: str, bundle_path: str | None = None, num_fewshot: int | None = None
) -> Selection:
    """The tasks named in `text`; `num_fewshot` overrides every task's few-shot count."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--tasks: no task named")
    bundle = _bundle_or_none(bundle_path)
    sets = bundles.task_sets(bundle) if bundle is not None else []
    bundle_specs = {
        spec.label: spec for name in sets for spec in bundles.read_task_set(bundle, name)
    }
    selection = Selection(names=names)
    for name in names:
        if name == BPB:
            selection.bpb = True
        elif synth.is_synth(name):
            synth.parse_spec(name)  # refuses a bad spec now
            selection.synth.append(name)
        elif name == BIGBENCH:
            selection.tasks += _bigbench_specs()
        elif name in _bigbench_labels() and name not in bundle_specs:
            selection.tasks += [s for s in _bigbench_specs() if s.label == name]
        elif name in sets:
            selection.tasks += bundles.read_task_set(bundle, name)
        elif name in bundle_specs:
            selection.tasks.append(bundle_specs[name])
        elif name in BUNDLE_SETS:  # raises: there is no bundle, or no such list in it
            bundles.read_task_set(bundles.find_bundle(bundle_path), name)
        else:
            known = [BPB, BIGBENCH, *BUNDLE_SETS, *sets, *bundle_specs, *_bigbench_labels()]
            raise _unknown(name, known, bundle is not None)
    if num_fewshot is not None:
        if num_fewshot < 0:
            raise ConfigError(f"--num-fewshot must be >= 0, got {num_fewshot}")
        selection.tasks = [dataclasses.replace(s, num_fewshot=num_fewshot) for s in selection.tasks]
    unique = {spec.label: spec for spec in selection.tasks}
    selection.tasks = list(unique.values())
    return selection
