"""Training checkpoints: atomic, the last N kept, with every piece of state needed to resume.

`OUT_DIR/checkpoints/step_{step:07d}.pt` holds a dict: `model`, `optimizer`, `step` (steps
done), `loader` (data position), `rng` (Python, NumPy, torch CPU and CUDA generators),
`counters` (tokens, skipped steps, ...), `train_config` and `model_config`. A checkpoint is
written to a temporary file, fsynced and renamed into place, so a crash leaves either the old
set of checkpoints or the new one, never half a file.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parcae.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
PATTERN = re.compile(r"^step_(\d{7})\.pt$")


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Finished checkpoints, oldest first."""
    directory = checkpoint_dir(out_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str | os.PathLike, step: int, state: dict[str, Any],
                    keep: int) -> Path:
    """Write `state` as the checkpoint of `step` (temp file, fsync, rename), then delete all
    but the newest `keep` checkpoints."""
    directory = checkpoint_dir(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:07d}.pt"
    tmp = directory / f".{path.name}.tmp"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(directory)
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable training checkpoint ({error})") from None
    missing = {"model", "optimizer", "step", "loader", "rng"} - set(state)
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(sorted(missing))})")
    return state
