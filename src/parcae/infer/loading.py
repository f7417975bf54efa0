"""Resolve what `--model PATH` names and load the model (and its tokenizer) for inference.

PATH may be a model directory (ours, transformers', or an official checkpoint: anything with a
`config.json`) or a training run directory, whose final model lives in `PATH/model/`. The
tokenizer is the `tokenizer.json` beside the model, else the run directory's; official
checkpoints may have none (then text prompts cannot be encoded).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from parcae.data.tokenizer import FILE_NAME, Tokenizer
from parcae.device import resolve_device
from parcae.errors import CheckpointError
from parcae.model import from_pretrained
from parcae.model.base import LanguageModel


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The directory holding the model's `config.json` for a model or run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model or run directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a model or run directory, got a file")
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise CheckpointError(
        f"{path}: neither a model directory (no config.json) nor a run "
        f"directory (no model/config.json)"
    )


def find_tokenizer(model_dir: Path) -> Tokenizer | None:
    """The tokenizer saved beside the model or in its run directory, or None."""
    for directory in (model_dir, model_dir.parent):
        if (directory / FILE_NAME).is_file():
            return Tokenizer.load(directory)
    return None


def load_for_inference(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[LanguageModel, Tokenizer | None]:
    """(model in eval mode, tokenizer or None) from a model or run directory. A device this
    machine lacks (or not a device) is refused first, in one line (`resolve_device`)."""
    device = resolve_device(device, "device")
    model_dir = resolve_model_dir(path)
    model = from_pretrained(model_dir, device=device, dtype=dtype)
    return model, find_tokenizer(model_dir)
