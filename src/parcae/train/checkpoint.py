"""Training checkpoints: hashed, verified on resume, the last N kept, with every piece of state
needed to resume.

`OUT_DIR/checkpoints/step_{step:07d}.pt` holds a dict: the `state_dict()` of each component
the `Checkpointer` was given, under its name (a run gives `model`, `optimizer`, `loader` for the
data position and `counters` for tokens and skipped steps), plus `step` (steps done), `rng`
(Python, NumPy, torch CPU and CUDA generators), `train_config` and `model_config`. Everything in
it is a tensor or a plain value (the NumPy generator state is stored as a dict holding a tensor),
so it is read with `torch.load(weights_only=True)`: a file that holds any other pickled object is
refused without running its code.

Beside it, `step_{step:07d}.pt.sha256` holds its SHA-256 in `sha256sum` format
(`<hex>  step_0000100.pt`, so `sha256sum -c` works in that directory). A save writes the `.pt`
through a temporary file (fsync, rename), then the `.sha256` the same way: the rename of the
`.sha256` is the commit point, and a `.pt` without one is an unfinished (or unverified) save.
A save that fails (disk full, no permission) leaves nothing of itself and the earlier checkpoints
as they were. After a save, all but the newest `keep_checkpoints` up to it are deleted, each `.pt`
with its `.sha256`.

Resuming tries the newest checkpoint first; one whose `.sha256` is missing or does not match, or
that cannot be read, is reported and skipped for the next older one. Nothing is deleted on
resume: a bad checkpoint stays until training reaches its step again and saves over it. A file
known to be fine can be trusted with `parcae upgrade-checkpoints OUT_DIR` (`upgrade_checkpoints`):
it also converts the checkpoints of parcae before 2026-11-30 (a pickled NumPy RNG state, no
hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from parcae.errors import CheckpointError
from parcae.outputs import write_atomic
from parcae.train.config import BUDGET_KEYS, TrainConfig
from parcae.train.distributed import DistInfo

CHECKPOINT_DIR = "checkpoints"
PATTERN = re.compile(r"^step_(\d{7})\.pt$")
HASH_SUFFIX = ".sha256"
HASH_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)\n?$")


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def hash_path(path: Path) -> Path:
    """The `.sha256` file beside the checkpoint at `path`."""
    return path.with_name(path.name + HASH_SUFFIX)


def numpy_rng_state(legacy: tuple) -> dict[str, Any]:
    """NumPy's `get_state()` tuple as tensors and plain values (loadable with weights_only)."""
    kind, keys, position, has_gauss, cached_gaussian = legacy
    return {
        "kind": kind,
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),  # uint32 words, widened
        "pos": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (loadable with weights_only)."""
    state = {
        "python": random.getstate(),
        "numpy": numpy_rng_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    numpy = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint file, verified or not, oldest first."""
    directory = checkpoint_dir(out_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Write `state` as the checkpoint of `step`, then its `.sha256` (the commit point). On a
    failure (an OSError: disk full, no permission) nothing is left of this save and the other
    checkpoints are untouched; the error propagates."""
    directory = checkpoint_dir(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:07d}.pt"
    replaced = False
    try:
        write_atomic(path, lambda handle: torch.save(state, handle))
        replaced = True
        line = f"{file_sha256(path)}  {path.name}\n".encode()
        write_atomic(hash_path(path), lambda handle: handle.write(line))
    except BaseException:
        if replaced:  # the .pt without its hash: an unfinished save of this step
            for leftover in (hash_path(path), path):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return path


def prune_checkpoints(out_dir: str | os.PathLike, keep: int, newest: Path) -> None:
    """Delete all but the `keep` newest checkpoints up to `newest` (the one just written), each
    with its `.sha256`. Checkpoints after `newest` (bad ones a resume skipped) are left alone:
    training saves over them when it reaches their step."""
    found = list_checkpoints(out_dir)
    for old in found[: found.index(newest) + 1][:-keep]:
        hash_path(old).unlink(missing_ok=True)  # first: a .pt left alone is unverified
        old.unlink(missing_ok=True)


class UnusableCheckpoint(CheckpointError):
    """The checkpoint at `path` cannot be trusted or read; `reason` is a short phrase.
    `trustable`: writing its hash would make it usable (the hash is what is missing or
    different), if the user knows the file is fine."""

    def __init__(self, path: Path, reason: str, trustable: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.trustable = path, reason, trustable


def verify_checkpoint(path: Path) -> None:
    """Raise UnusableCheckpoint unless `path` matches the hash in its `.sha256`."""
    sidecar = hash_path(path)
    try:
        text = sidecar.read_text()
    except FileNotFoundError:
        raise UnusableCheckpoint(
            path, "no .sha256 (an unfinished or unverified save)", True
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UnusableCheckpoint(path, f"unreadable .sha256 ({_one_line(error)})", True) from None
    match = HASH_LINE.match(text)
    if match is None or match.group(2) != path.name:
        raise UnusableCheckpoint(path, f"{sidecar.name} is not a sha256sum line for it", True)
    try:
        digest = file_sha256(path)
    except OSError as error:
        raise UnusableCheckpoint(path, f"unreadable ({_one_line(error)})") from None
    if digest != match.group(1):
        raise UnusableCheckpoint(path, "hash mismatch", True)


def _one_line(error: BaseException) -> str:
    """The gist of `error` on one line (torch's unpickling errors span many)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\n|$)", text)
    if detail:
        return detail.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_checkpoint(
    path: str | os.PathLike, required: Collection[str] = ("step", "rng")
) -> dict[str, Any]:
    """The state saved at `path`, verified against its hash and read as tensors and plain
    values only; raises UnusableCheckpoint unless it holds the `required` keys."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = _one_line(error).split(". ")[0]  # torch goes on with advice
        if reason.startswith("Unsupported global"):
            raise UnusableCheckpoint(
                path, f"holds a pickled object, not only tensors ({reason}); not loaded"
            ) from None
        raise UnusableCheckpoint(path, f"unreadable ({reason})") from None
    missing = set(required) - set(state) if isinstance(state, dict) else set(required)
    if missing:
        raise UnusableCheckpoint(
            path, f"not a training checkpoint (missing {', '.join(sorted(missing))})"
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
    and restores them from the newest good checkpoint.

    Config keys: out_dir, checkpoint_every, keep_checkpoints, resume (and RESUME_KEYS, checked
    against the checkpoint's run; the budget keys, checked against its step). Every process
    calls `save` and `restore` (the state dicts may be collectives); the main process writes.
    `good` is the newest checkpoint this process verified (restored from) or wrote itself: the
    one to name as good when training fails.
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
        self.good: Path | None = None

    def due(self, step: int) -> bool:
        """Whether `step` is a scheduled checkpoint (every `checkpoint_every` steps)."""
        return step % self.config.checkpoint_every == 0

    def save(self, step: int) -> Path | None:
        """Write the checkpoint of `step` and prune old ones; returns its path on the main
        process. A write that fails (disk full, no permission) raises CheckpointError."""
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
        directory = checkpoint_dir(self.out_dir)
        try:
            self.good = save_checkpoint(self.out_dir, step, state)
            prune_checkpoints(self.out_dir, self.config.keep_checkpoints, self.good)
        except OSError as error:
            earlier = f"the newest good one is {self.good}" if self.good else "none is verified"
            raise CheckpointError(
                f"cannot save checkpoint step_{step:07d}.pt in {directory}: "
                f"{error.strerror or error}; the earlier checkpoints are intact ({earlier})"
            ) from None
        return self.good

    def restore(
        self,
        steps_total: int,
        exported: bool,
        say: Callable[[str], None],
        warn: Callable[[str], None],
    ) -> int:
        """With `resume`, load the newest good checkpoint into the components and the RNGs;
        returns its step (0 for a fresh start). Bad checkpoints are reported with `warn` and
        skipped. Refuses a checkpoint past the budget of `steps_total` steps, or at it when the
        run is finished (`exported`; otherwise the run goes on to its final evaluation and
        export). Without `resume`, refuses a directory that already holds checkpoints."""
        found = list_checkpoints(self.out_dir)
        if not self.config.resume:
            if found:
                raise CheckpointError(
                    f"{self.out_dir} already holds checkpoints; pass "
                    "resume=true to continue that run or choose another "
                    "out_dir"
                )
            return 0
        if not found:
            warn(
                f"parcae: resume=true but no checkpoint in {checkpoint_dir(self.out_dir)}; "
                "starting fresh"
            )
            return 0
        state, path, skipped = self._newest_good(found)
        saved, step = state.get("train_config", {}), state["step"]
        for key in RESUME_KEYS:
            if key in saved and saved[key] != getattr(self.config, key):
                raise CheckpointError(
                    f"{path}: was trained with {key}={saved[key]!r}, this "
                    f"run has {getattr(self.config, key)!r}; cannot resume"
                )
        self._check_budget(path, step, steps_total, exported, say)
        for name, component in self.components.items():
            component.load_state_dict(state[name])
        set_rng_state(state["rng"])
        self.good = path
        for bad in skipped:  # reported once resuming succeeded: a refusal stays one line
            warn(f"parcae: skipping checkpoint {bad.path}: {bad.reason}; falling back")
        if skipped:
            reasons = "; ".join(f"{bad.path.name}: {bad.reason}" for bad in skipped)
            warn(f"parcae: resumed from {path} at step {step} (skipped newer {reasons})")
        else:
            say(f"parcae: resumed from {path} at step {step}")
        return step

    def _newest_good(
        self, found: list[Path]
    ) -> tuple[dict[str, Any], Path, list[UnusableCheckpoint]]:
        """(state, path) of the newest checkpoint that verifies and loads, and the newer ones
        skipped; CheckpointError when there is none."""
        skipped = []
        for path in reversed(found):
            try:
                return load_checkpoint(path, ("step", "rng", *self.components)), path, skipped
            except UnusableCheckpoint as bad:
                skipped.append(bad)
        newest, directory = skipped[0], checkpoint_dir(self.out_dir)
        others = len(skipped) - 1
        older = f"; {others} older one{'s' * (others > 1)} unusable too" if others else ""
        name = newest.path.name
        advice = (
            f"if you wrote {name} yourself (an older parcae, or a save cut short), trust and "
            f"convert it with `parcae upgrade-checkpoints {self.out_dir}` and resume again"
            if newest.trustable
            else "choose another out_dir to start over"
        )
        raise CheckpointError(
            f"no usable checkpoint in {directory} (the newest, {name}: {newest.reason}{older}); "
            f"{advice}"
        )

    def _check_budget(
        self, path: Path, step: int, steps_total: int, exported: bool, say: Callable[[str], None]
    ) -> None:
        """Refuse to resume past the budget, or at it when the run is finished."""
        budget = ", ".join(
            f"{key}={value}"
            for key in BUDGET_KEYS
            if (value := getattr(self.config, key)) is not None
        )
        if step > steps_total:
            steps = f"{steps_total} step{'s' * (steps_total > 1)}"
            raise CheckpointError(
                f"checkpoint {path} is at step {step}: the budget ({budget}, {steps}) is "
                "already reached; raise it to train further"
            )
        if step == steps_total:
            if exported:
                raise CheckpointError(
                    f"checkpoint {path} is at step {step}, the end of the budget ({budget}): "
                    "this run is already finished; raise the budget to train further"
                )
            say(
                f"parcae: checkpoint {path} is at the end of the budget ({steps_total} steps) "
                "but the run has no exported model; finishing it (final evaluation and export)"
            )


def upgrade_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Trust the checkpoints of `out_dir` that have no `.sha256` (written by parcae before
    2026-11-30, or a save cut short between its two renames): read each with full unpickling
    (only for files the user vouches for), store the NumPy RNG state as tensors, and write it
    back with its hash. Returns the checkpoints upgraded; those with a hash are left alone."""
    upgraded = []
    for path in list_checkpoints(out_dir):
        if hash_path(path).exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # truncated or foreign files: several types
            raise CheckpointError(f"{path}: unreadable ({_one_line(error)})") from None
        if not isinstance(state, dict) or not {"step", "rng"} <= set(state):
            raise CheckpointError(f"{path}: not a parcae training checkpoint")
        if isinstance(state["rng"].get("numpy"), tuple):
            state["rng"]["numpy"] = numpy_rng_state(state["rng"]["numpy"])
        upgraded.append(save_checkpoint(out_dir, state["step"], state))
    return upgraded
