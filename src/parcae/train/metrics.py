"""Where training records go: `OUT_DIR/metrics.jsonl`, TensorBoard, and W&B when asked for.

Each record is one JSON object per line. Train records: `{"kind": "train", "step", "loss",
"lr", "tokens", "grad_norm", "tokens_per_s", "mfu", "skipped", ...}`; eval records:
`{"kind": "eval", "step", "tokens", "val_loss": {T: loss}, "val_bpb": {T: bpb},
"spectral_radius", "state_norm", "residual", ...}` with depth keys as strings ("4", or "model"
for a fixed-depth model). `step` counts optimizer steps done.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a run, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Drop records after `last_step` (written by a run that died after its last checkpoint)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


class MetricsLogger:
    """Appends records to the JSONL file and mirrors numeric fields to TensorBoard and W&B."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True,
                 wandb: bool = False, wandb_project: str = "parcae",
                 config: dict[str, Any] | None = None) -> None:
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
                print("parcae: wandb=true but wandb is not installed (pip install wandb); "
                      "logging to metrics.jsonl and TensorBoard only")
            else:
                self._wandb = wandb_module.init(project=wandb_project, dir=str(self.run_dir),
                                                name=self.run_dir.name, config=config,
                                                resume="allow")

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
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            yield f"{prefix}/{key}", float(value)
