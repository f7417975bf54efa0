"""One evaluation run: a model, its tasks and depths, and the results file (ARCHITECTURE §5).

Everything that can be refused is checked before the model runs: the task names, every item of
every task, the depths, the tokenizer and the validation data. The results are written after
bpb and after each task (atomically), with "complete": false until the last one, so a run that
stops half-way leaves what it measured. The JSON:

    {"model": PATH, "looped": bool, "mean_recurrence": μ_rec, "depths": [...],
     "results": [{"task", "depth", "accuracy", "centered", "n", "truncated"}, ...],
         (a synthetic task `synth:...` has one result per difficulty and depth, its task
          labelled "<spec> <difficulty key>=<d>", centered = accuracy),
     "core": {"T": mean centered accuracy}, "core_tasks": [labels],
     "bpb": {"T": bits per byte}, "loss": {"T": nats per token}, "bpb_tokens": N,
     "timing": {label: {"items", "seconds", "items_per_second"}}, "complete": bool}

Depth keys are strings; a fixed-depth model has the one key "fixed".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from parcae.data import runs as data_runs
from parcae.data.loader import iter_eval_batches
from parcae.data.runs import run_data_dir
from parcae.data.shards import MANIFEST, load_manifest
from parcae.data.tokenizer import Tokenizer
from parcae.errors import ConfigError, DataError
from parcae.eval.core import TaskResult, core_score, evaluate_task
from parcae.eval.depths import check_depths
from parcae.eval.loss import default_depths, evaluate
from parcae.eval.reasoning import reasoning_accuracy
from parcae.eval.selection import resolve_tasks
from parcae.eval.tasks import load_task
from parcae.infer.loading import load_for_inference, resolve_model_dir
from parcae.outputs import output_file, write_json_atomic

FIXED = "fixed"
SYNTH_ITEMS = 256  # items per difficulty of a synthetic task without --max-per-task


def depth_key(depth: int | None) -> str:
    return FIXED if depth is None else str(depth)


@dataclass
class EvalRequest:
    """What `parcae eval` was asked (see its --help)."""

    model: str
    tasks: str = "bpb,bigbench"  # see `parcae.eval.selection.resolve_tasks`
    bundle: str | None = None
    num_fewshot: int | None = None
    depths: list[int] | None = None  # default: 1, 2, 4 and μ_rec
    out: str | None = None
    max_per_task: int | None = None
    batch_size: int = 16
    data: str | None = None  # prepared directory for bpb; default: the run's
    bpb_batches: int | None = None
    seq_len: int | None = None  # default: the run's, else the model's context
    device: str = "cpu"
    progress: bool = True


def validation_dir(model_path: str, data: str | None) -> Path:
    """The prepared data whose validation split bpb is measured on: `data`, else the data of
    the training run that `model_path` belongs to (`parcae.data.runs`)."""
    if data is not None:
        if not (Path(data) / MANIFEST).is_file():
            raise DataError(
                f"--data {data}: not a prepared directory (no {MANIFEST}); "
                "make one with `parcae data prepare`"
            )
        return Path(data)
    directory = run_data_dir(resolve_model_dir(model_path).parent)
    if directory is None:
        raise DataError(
            f"bpb needs validation data and {model_path} names none that exists: pass --data "
            "DIR (a prepared directory, from `parcae data prepare`)"
        )
    return directory


def run_seq_len(model_path: str) -> int | None:
    """The seq_len of the training run `model_path` was saved by (None outside a run)."""
    return data_runs.run_seq_len(resolve_model_dir(model_path).parent)


def write_results(path: Path, results: dict) -> None:
    """Write the results JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, results, indent=2)


def default_out(model_path: str) -> Path:
    """eval-<model directory name>.json in the working directory."""
    name = Path(model_path).resolve().name or "model"
    return Path(f"eval-{name}.json")


def run_eval(request: EvalRequest) -> dict:
    """Evaluate, writing the results file as it goes; returns the results dict."""
    model, tokenizer = load_for_inference(request.model, device=request.device)
    config = model.config
    selection = resolve_tasks(request.tasks, request.bundle, request.num_fewshot)
    if selection.tasks and tokenizer is None:
        raise ConfigError(
            f"{request.model} has no tokenizer.json: the ICL tasks need one to encode prompts "
            "(save the tokenizer beside the model)"
        )
    if request.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {request.batch_size}")
    if request.max_per_task is not None and request.max_per_task < 1:
        raise ConfigError(f"--max-per-task must be >= 1, got {request.max_per_task}")
    if request.seq_len is not None and not 1 <= request.seq_len <= config.context_length:
        raise ConfigError(
            f"--seq-len must be in [1, {config.context_length}] (the model's context), "
            f"got {request.seq_len}"
        )
    depths = check_depths(model, request.depths or default_depths(model))
    tasks = [load_task(spec, request.max_per_task) for spec in selection.tasks]
    data_dir = validation_dir(request.model, request.data) if selection.bpb else None
    if data_dir is not None:
        data_tokenizer = Tokenizer.load(data_dir)
        if tokenizer is not None:
            load_manifest(data_dir, tokenizer.hash)  # refuses data of another tokenizer
        if data_tokenizer.vocab_size > config.vocab_size:
            raise DataError(
                f"{data_dir}: its tokenizer has {data_tokenizer.vocab_size} tokens, more than "
                f"the model's vocab_size {config.vocab_size}"
            )
    out = output_file(request.out or default_out(request.model), "--out")
    results: dict = {
        "model": str(request.model),
        "looped": config.is_looped,
        "mean_recurrence": config.default_depth,
        "depths": [depth_key(d) for d in depths],
        "tasks": selection.names,
        "results": [],
        "timing": {},
        "complete": False,
    }
    write_results(out, results)
    if data_dir is not None:
        seq_len = min(
            request.seq_len or run_seq_len(request.model) or config.context_length,
            config.context_length,
        )
        batches = iter_eval_batches(
            data_dir, "val", request.batch_size, seq_len, request.bpb_batches
        )
        token_bytes = torch.from_numpy(data_tokenizer.token_byte_lengths())
        start = time.perf_counter()
        rows = (load_manifest(data_dir)["splits"]["val"]["tokens"] - 1) // seq_len
        total = -(-rows // request.batch_size)
        if request.bpb_batches is not None:
            total = min(total, request.bpb_batches)
        batches = tqdm(batches, total=total, desc="bpb", unit="batch", disable=not request.progress)
        measured = evaluate(model, batches, token_bytes, depths, request.device)
        results["bpb"] = {depth_key(r.depth): r.bpb for r in measured}
        results["loss"] = {depth_key(r.depth): r.loss for r in measured}
        results["bpb_tokens"] = measured[0].tokens
        results["timing"]["bpb"] = {"seconds": time.perf_counter() - start}
        write_results(out, results)
    scored: list[TaskResult] = []
    for task in tasks:
        start = time.perf_counter()
        task_results = evaluate_task(
            model, tokenizer, task, depths, request.batch_size, request.progress
        )
        seconds = time.perf_counter() - start
        scored += task_results
        results["results"] += [r.to_dict() for r in task_results]
        results["timing"][task.spec.label] = {
            "items": len(task.items),
            "seconds": seconds,
            "items_per_second": len(task.items) / seconds,
        }
        write_results(out, results)
    for spec in selection.synth:
        start = time.perf_counter()
        task_results = reasoning_accuracy(
            model,
            spec,
            depths,
            request.max_per_task or SYNTH_ITEMS,
            request.batch_size,
            request.device,
        )
        results["results"] += [r.to_dict() for r in task_results]
        results["timing"][spec] = {"seconds": time.perf_counter() - start}
        write_results(out, results)
    if tasks:
        by_depth = core_score(scored)
        results["core"] = {depth_key(depth): value for depth, value in by_depth.items()}
        results["core_tasks"] = [task.spec.label for task in tasks]
    results["complete"] = True
    results["out"] = str(out)
    write_results(out, results)
    return results
