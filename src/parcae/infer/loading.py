"""Load what `--model REF` names (and its tokenizer) for inference.

REF is a model or training run directory, or a Hub repo `org/name[@revision]`
(`parcae.model.hub.resolve_model_dir` turns it into the directory holding `config.json`). The
tokenizer is the `tokenizer.json` beside the model, else the run directory's; official
checkpoints may have none (then text prompts cannot be encoded).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from parcae.data.tokenizer import FILE_NAME, Tokenizer
from parcae.device import resolve_device
from parcae.errors import DataError
from parcae.model import from_pretrained
from parcae.model.base import LanguageModel
from parcae.model.hub import resolve_model_dir


def find_tokenizer(model_dir: Path) -> Tokenizer | None:
    """The tokenizer saved beside the model or in its run directory, or None."""
    for directory in (model_dir, model_dir.parent):
        if (directory / FILE_NAME).is_file():
            return Tokenizer.load(directory)
    return None


def load_tokenizer(
    ref: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> Tokenizer:
    """The tokenizer of the model `ref` names (a model or run directory, or a Hub repo
    `org/name[@revision]`, resolved as `from_pretrained` resolves it). A model without one is
    refused in one line (`DataError`)."""
    model_dir = resolve_model_dir(ref, revision=revision, cache_dir=cache_dir, token=token)
    tokenizer = find_tokenizer(model_dir)
    if tokenizer is None:
        raise DataError(f"{ref} has no {FILE_NAME} (beside the model or in its run directory)")
    return tokenizer


def load_for_inference(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[LanguageModel, Tokenizer | None]:
    """(model in eval mode, tokenizer or None) from a model or run directory or a Hub name. A
    device this machine lacks (or not a device) is refused first, in one line
    (`resolve_device`)."""
    device = resolve_device(device, "device")
    model_dir = resolve_model_dir(path)
    model = from_pretrained(model_dir, device=device, dtype=dtype)
    return model, find_tokenizer(model_dir)
