"""Where a run's training data lives: the prepared directory of a `data` spec, and the one a
training run used, read back from the `config.yaml` the run wrote into its output directory.

A spec that is a prepared directory (holding `manifest.json`) is used as is; a corpus is prepared
once into `data_dir`, by default `$PARCAE_CACHE/prepared/<name>-v<vocab_size>` (a synthetic task:
`$PARCAE_CACHE/prepared/synth`). Training prepares it (`parcae.train.data`); evaluating a saved
model only looks it up (`run_data_dir`), so evaluation needs no training code.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from parcae.data import synth
from parcae.data.recipes import RECIPES, cache_root
from parcae.data.shards import MANIFEST
from parcae.errors import ConfigError
from parcae.values import read_yaml

RUN_CONFIG = "config.yaml"  # a training run's settings, in its output directory


def default_data_dir(spec: str, tokenizer_name: int | str) -> Path:
    """Where corpus `spec` is prepared by default: `$PARCAE_CACHE/prepared/<name>-v<tokenizer>`
    (`tokenizer_name`: the vocabulary size of a tokenizer trained for it, or `t<hash>` of a
    given one), `<name>` a recipe's name or the spec's stem and hash."""
    if synth.is_synth(spec):
        return cache_root() / "prepared" / "synth"
    if spec in RECIPES:
        name = spec
    else:
        stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(spec).name or spec).strip("-")[:40]
        name = f"{stem}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
    return cache_root() / "prepared" / f"{name}-v{tokenizer_name}"


def prepared_dir(spec: str, data_dir: str | None, tokenizer_name: int | str) -> Path:
    """The prepared directory of `spec`: the spec itself when it is one (holds the manifest),
    else `data_dir` when given, else `default_data_dir(spec, tokenizer_name)`. It need not
    exist yet."""
    if (Path(spec) / MANIFEST).is_file():
        return Path(spec)
    return Path(data_dir) if data_dir else default_data_dir(spec, tokenizer_name)


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The settings a training run wrote to `run_dir/config.yaml`, None when there is none."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        settings = read_yaml(path.read_bytes())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: expected a mapping of training config keys")
    return settings


def run_data_dir(run_dir: Path) -> Path | None:
    """The prepared data the training run in `run_dir` trained on, when it still exists (None
    outside a run, or when the run's data was never prepared or has been removed)."""
    settings = read_run_config(run_dir)
    if settings is None or not isinstance(spec := settings.get("data"), str):
        return None
    data_dir = settings.get("data_dir")
    directory = prepared_dir(
        spec, data_dir if isinstance(data_dir, str) else None, settings.get("vocab_size")
    )
    return directory if (directory / MANIFEST).is_file() else None


def run_seq_len(run_dir: Path) -> int | None:
    """The sequence length the training run in `run_dir` trained at (None outside a run)."""
    settings = read_run_config(run_dir)
    seq_len = None if settings is None else settings.get("seq_len")
    is_count = isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len > 0
    return seq_len if is_count else None
