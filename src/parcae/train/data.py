"""The training data of a run: a prepared directory, made on first use when `data` is a corpus.

`data` is either a prepared directory (holding `manifest.json` and `tokenizer.json`) used as is,
or a corpus spec (`shakespeare`, a file or directory, `hf:NAME`): then a tokenizer of
`vocab_size` tokens is trained on its train split and the corpus is tokenised into `data_dir`
(default `$PARCAE_CACHE/prepared/<name>-v<vocab_size>`), once; later runs reuse it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from parcae.data.prepare import prepare_dataset
from parcae.data.recipes import RECIPES, cache_root
from parcae.data.shards import MANIFEST
from parcae.data.train_tokenizer import train_tokenizer
from parcae.data.tokenizer import FILE_NAME


def default_data_dir(spec: str, vocab_size: int) -> Path:
    if spec in RECIPES:
        name = spec
    else:
        stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(spec).name or spec).strip("-")[:40]
        name = f"{stem}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
    return cache_root() / "prepared" / f"{name}-v{vocab_size}"


def resolve_data_dir(spec: str, data_dir: str | None, vocab_size: int, val_fraction: float,
                     prepare: bool, progress: bool = True) -> Path:
    """The prepared directory for `spec`, preparing it when `prepare` (the main process) and it
    is missing. Other processes call this with `prepare=False` after a barrier."""
    if (Path(spec) / MANIFEST).is_file():
        return Path(spec)
    directory = Path(data_dir) if data_dir else default_data_dir(spec, vocab_size)
    if prepare and not (directory / MANIFEST).is_file():
        if not (directory / FILE_NAME).is_file():
            report = train_tokenizer(spec, vocab_size, directory, val_fraction, progress=progress)
            if progress:
                print(f"parcae: trained a {report.tokenizer.vocab_size}-token tokenizer in "
                      f"{report.seconds:.1f} s -> {report.path}")
        prepare_dataset(spec, directory, directory, val_fraction, progress=progress)
    return directory
