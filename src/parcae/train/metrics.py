"""Where training records go: `OUT_DIR/metrics.jsonl`, TensorBoard, and W&B when asked for.

Each record is one JSON object per line. Train records: `{"kind": "train", "step", "loss",
"lr", "lr_factor", "tokens", "grad_norm", "skipped", "tokens_per_s", "mfu", "step_time",
"mean_depth"}` with tokens_per_s = B·S / step_time and mfu = training FLOPs per token of the
step's drawn depths · tokens_per_s / (W · peak). The peak (`parcae.perf.peak_flops`) is the
device's data-sheet bf16 figure where known, else the best matmul rate the machine has shown,
measured after the first step (when a compiler's workers have settled) and in earlier runs;
it is raised to any rate a step reached, so MFU stays ≤ 100%. Eval records: `{"kind": "eval",
"step", "tokens", "val_loss": {T: loss}, "val_bpb": {T: bpb}, "state_norm", "residual",
"spectral_radius", ...}` with depth keys as strings ("4", or "model" for a fixed-depth model).
`step` counts optimizer steps done.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from parcae.data.runs import RUN_CONFIG
from parcae.errors import DataError
from parcae.eval.loss import EvalResult
from parcae.outputs import write_text_atomic
from parcae.perf import peak_flops
from parcae.train.config import TrainConfig
from parcae.train.distributed import DistInfo
from parcae.train.model import TrainModel
from parcae.values import parse_json

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a run, in order. A torn last line (a crash mid-write) is dropped with a
    warning on stderr; a line that is not JSON anywhere else raises DataError naming it."""
    return [record for _, record in _records(Path(run_dir) / METRICS_FILE)]


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for each record of the metrics file at `path` (see `read_metrics`)."""
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append((line, parse_json(line)))
        except ValueError:
            if index == len(lines) - 1:
                print(f"parcae: {path}:{number}: dropped a torn last line", file=sys.stderr)
                break
            raise DataError(
                f"{path}:{number}: not a JSON record; the metrics file is corrupt (fix or "
                "remove that line)"
            ) from None
    return records


def truncate_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Drop records after `last_step` (written by a run that died after its last checkpoint),
    and a torn last line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line, record in _records(path) if record.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


class MetricsLogger:
    """Appends records to the JSONL file and mirrors numeric fields to TensorBoard and W&B."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "parcae",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / METRICS_FILE, "a")
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
        self._wandb = None
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                print(
                    "parcae: wandb=true but wandb is not installed (pip install wandb); "
                    "logging to metrics.jsonl and TensorBoard only"
                )
            else:
                self._wandb = wandb_module.init(
                    project=wandb_project,
                    dir=str(self.run_dir),
                    name=self.run_dir.name,
                    config=config,
                    resume="allow",
                )

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_clean(record)) + "\n")
        self._file.flush()
        step, kind = record["step"], record.get("kind", "train")
        scalars = dict(_flatten(record, kind))
        if self._tensorboard is not None:
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _flatten(record: dict[str, Any], prefix: str):
    """(name, float) pairs of the numeric fields, dicts flattened as `prefix/key/subkey`."""
    for key, value in record.items():
        if key in ("step", "kind"):
            continue
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}/{key}")
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            yield f"{prefix}/{key}", float(value)


@functools.cache
def _peak_flops(dtype: torch.dtype, device: str) -> float:
    return peak_flops(dtype, device)


def depth_key(result: EvalResult) -> str:
    return "model" if result.depth is None else str(result.depth)


def format_eval(results: list[EvalResult]) -> str:
    """One line: loss and bpb at each depth."""
    return "  ".join(f"T={depth_key(r)}: loss {r.loss:.4f} bpb {r.bpb:.4f}" for r in results)


def eval_record(
    results: list[EvalResult], step: int, tokens: int, diagnostics: dict[str, float]
) -> dict:
    """The eval record of `results`; a looped model adds its state norm and residual per depth
    and at the deepest one (`state_norm_final`, `residual_final`), then `diagnostics`."""
    record = {
        "kind": "eval",
        "step": step,
        "tokens": tokens,
        "val_loss": {depth_key(r): r.loss for r in results},
        "val_bpb": {depth_key(r): r.bpb for r in results},
    }
    looped = [r for r in results if r.state_norm is not None]
    if looped:
        deepest = max(looped, key=lambda r: r.depth)
        record["state_norm"] = {depth_key(r): r.state_norm for r in looped}
        record["residual"] = {depth_key(r): r.residual for r in looped}
        record["state_norm_final"], record["residual_final"] = deepest.state_norm, deepest.residual
    return {**record, **diagnostics}


class Metrics:
    """What a run reports: messages and a progress bar on the console (`progress`), and the
    records (`log_every`, `tensorboard`, `wandb`, `wandb_project`) with `config.yaml`; only
    the main process reports.
    """

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.config, self.info = config, info
        self.show = info.is_main and config.progress
        self._logger: MetricsLogger | None = None
        self._bar: tqdm | None = None
        # the training precision and device, and the peak FLOP/s of all processes together
        self._dtype, self._device, self._peak = torch.float32, "cpu", math.inf

    def say(self, message: str) -> None:
        """Progress news (the run's banner, evaluations): shown with `progress`."""
        if self.show:
            tqdm.write(message)

    def warn(self, message: str) -> None:
        """What a user must see whatever `progress` says (a fresh start where a resume was
        asked, a skipped step, a stop by signal, a checkpoint passed over): on stderr."""
        if self.info.is_main:
            tqdm.write(message, file=sys.stderr)

    def open(self, model: TrainModel, data_dir: Path, step: int, total_steps: int) -> None:
        """Start reporting a run of `total_steps` at `step`, dropping the records written after
        `step` (by a run that died after its last checkpoint, or before its first)."""
        config, out_dir = self.config, Path(self.config.out_dir)
        self._dtype, self._device = model.dtype, str(model.device)
        if self.info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            config.save(out_dir / RUN_CONFIG)
            truncate_metrics(out_dir, step)  # at 0: a run killed before its first checkpoint
            self._logger = MetricsLogger(
                out_dir, config.tensorboard, config.wandb, config.wandb_project, config.to_dict()
            )
            precision = "bf16" if model.dtype == torch.bfloat16 else "fp32"
            self.say(
                f"parcae: training {config.init_from or config.model} "
                f"({model.params:,} parameters, "
                f"{model.flops_per_token / 1e6:.1f} MFLOPs/token) for {total_steps} steps "
                f"of {config.batch_size}x{config.seq_len} tokens on "
                f"{self.info.world_size}x{model.device.type} in {precision}; data {data_dir}"
            )
        self._bar = tqdm(
            total=total_steps,
            initial=step,
            disable=not self.show,
            unit="step",
            dynamic_ncols=True,
            file=sys.stdout,
        )

    def log_step(
        self,
        step: int,
        seconds: float,
        *,
        force: bool,
        flops_per_token: float,
        mean_depth: float | None,
        **values: float,
    ) -> None:
        """The train record of `step` (done in `seconds`, `flops_per_token` at its drawn
        depths) from `values` (loss, lr, lr_factor, tokens, grad_norm, skipped), every
        `log_every` steps or when `force`d; the bar moves on every step."""
        tokens_per_s = self.config.batch_size * self.config.seq_len / seconds
        mfu = flops_per_token * tokens_per_s / self._step_peak(flops_per_token * tokens_per_s)
        if self._logger is not None and (step % self.config.log_every == 0 or force):
            record = {
                "kind": "train",
                "step": step,
                **values,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
                "step_time": seconds,
            }
            if mean_depth is not None:
                record["mean_depth"] = mean_depth
            self._logger.log(record)
        self._bar.update(1)
        self._bar.set_postfix(
            loss=f"{values['loss']:.3f}",
            tok_s=f"{tokens_per_s:,.0f}",
            mfu=f"{mfu:.1%}",
            refresh=False,
        )

    def _step_peak(self, rate: float) -> float:
        """The peak FLOP/s a step at `rate` FLOP/s is measured against (module docstring)."""
        if math.isinf(self._peak):
            self._peak = _peak_flops(self._dtype, self._device) * self.info.world_size
        self._peak = max(self._peak, rate)
        return self._peak

    def log_eval(
        self, step: int, tokens: int, results: list[EvalResult], diagnostics: dict[str, float]
    ) -> None:
        if self._logger is not None:
            self._logger.log(eval_record(results, step, tokens, diagnostics))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._logger is not None:
            self._logger.close()
