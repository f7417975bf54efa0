"""Training checkpoints: atomic, the last N kept, with every piece of state needed to resume.

`OUT_DIR/checkpoints/step_{step:07d}.pt` holds a dict: the `state_dict()` of each component
the `Checkpointer` was given, under its name (a run gives `model`, `optimizer`, `loader` for the
data position and `counters` for tokens and skipped steps), plus `step` (steps done), `rng`
(Python, NumPy, torch CPU and CUDA generators), `train_config` and `model_config`. A checkpoint
is written to a temporary file, fsynced and renamed into place, so a crash leaves either the
old set of checkpoints or the new one, never half a file.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from parcae.errors import CheckpointError
from parcae.train.config import TrainConfig
from parcae.train.distributed import DistInfo

CHECKPOINT_DIR = "checkpoints"
PATTERN = re.compile(r"^step_(\d{7})\.pt$")


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
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


def save_checkpoint(
    out_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int
) -> Path:
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


def load_checkpoint(
    path: str | os.PathLike, required: Collection[str] = ("step", "rng")
) -> dict[str, Any]:
    """The state saved at `path`, refused unless it holds the `required` keys."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable training checkpoint ({error})") from None
    missing = set(required) - set(state)
    if missing:
        raise CheckpointError(
            f"{path}: not a training checkpoint (missing {', '.join(sorted(missing))})"
        )
    return state


class Stateful(Protocol):
    """A component with checkpointed state (a model, an optimizer, a data loader, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# what a resumed run must share with the run that wrote the checkpoint
RESUME_KEYS = ("model", "model_overrides", "batch_size", "seq_len", "seed", "optimizer")


class Checkpointer:
    """Saves `components` (name -> object with `state_dict`/`load_state_dict`) with the RNGs
    and restores them from the latest checkpoint.

    Config keys: out_dir, checkpoint_every, keep_checkpoints, resume (and RESUME_KEYS, checked
    against the checkpoint's run). Every process calls `save` and `restore` (the state dicts
    may be collectives); the main process writes.
    """

    def __init__(
        self,
        config: TrainConfig,
        info: DistInfo,
        components: dict[str, Stateful],
        model_config: dict[str, Any],
    ) -> None:
        self.config, self.info, self.components = config, info, components
        self.model_config = model_config
        self.out_dir = Path(config.out_dir)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.out_dir)

    def due(self, step: int) -> bool:
        """Whether `step` is a scheduled checkpoint (every `checkpoint_every` steps)."""
        return step % self.config.checkpoint_every == 0

    def save(self, step: int) -> Path | None:
        """Write the checkpoint of `step`; returns its path on the main process."""
        states = {name: component.state_dict() for name, component in self.components.items()}
        if not self.info.is_main:
            return None
        state = {
            **states,
            "step": step,
            "rng": rng_state(),
            "train_config": self.config.to_dict(),
            "model_config": self.model_config,
        }
        return save_checkpoint(self.out_dir, step, state, self.config.keep_checkpoints)

    def restore(self, say: Callable[[str], None]) -> int:
        """With `resume`, load the latest checkpoint into the components and the RNGs; returns
        its step (0 for a fresh start). Without `resume`, refuses a directory that already
        holds checkpoints."""
        latest = self.latest()
        if not self.config.resume:
            if latest is not None:
                raise CheckpointError(
                    f"{self.out_dir} already holds checkpoints; pass "
                    "resume=true to continue that run or choose another "
                    "out_dir"
                )
            return 0
        if latest is None:
            say(
                f"parcae: resume=true but no checkpoint in {checkpoint_dir(self.out_dir)}; "
                "starting fresh"
            )
            return 0
        state = load_checkpoint(latest, ("step", "rng", *self.components))
        saved = state.get("train_config", {})
        for key in RESUME_KEYS:
            if key in saved and saved[key] != getattr(self.config, key):
                raise CheckpointError(
                    f"{latest}: was trained with {key}={saved[key]!r}, this "
                    f"run has {getattr(self.config, key)!r}; cannot resume"
                )
        for name, component in self.components.items():
            component.load_state_dict(state[name])
        set_rng_state(state["rng"])
        say(f"parcae: resumed from {latest} at step {state['step']}")
        return state["step"]
