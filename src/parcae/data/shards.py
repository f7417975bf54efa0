"""On-disk format of a prepared dataset, and reading it back.

A prepared directory holds, per split (`train`, `val`), raw token shards `{split}_{i:05d}.bin`
(little-endian uint16 when the vocabulary fits, else uint32; every document is preceded by BOS,
documents are concatenated without padding), a copy of the tokenizer (`tokenizer.json`) and
`manifest.json`, written last: a directory without a manifest is not a dataset. While preparation
runs, `progress.json` records the finished shards so an interrupted run can resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from parcae.errors import DataError
from parcae.outputs import write_atomic, write_json_atomic
from parcae.values import parse_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.bin"


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file, then rename it over `path` (readers never see half a
    file)."""
    write_json_atomic(path, data)


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write a token array atomically (temporary file, then rename)."""
    write_atomic(path, lambda handle: handle.write(tokens.tobytes()))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return parse_json(path.read_bytes())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable ({error})") from None


def load_manifest(data_dir: str | os.PathLike, tokenizer_hash: str | None = None) -> dict[str, Any]:
    """The manifest of a prepared directory, after checking that it is complete and its shards
    intact.

    With `tokenizer_hash`, also refuse shards made with another tokenizer.
    """
    data_dir = Path(data_dir)
    if not (data_dir / MANIFEST).is_file():
        if (data_dir / PROGRESS).is_file():
            raise DataError(
                f"{data_dir}: preparation was interrupted; re-run "
                "`parcae data prepare` with the same arguments to resume"
            )
        raise DataError(
            f"{data_dir}: not a prepared dataset (no {MANIFEST}); run `parcae data prepare`"
        )
    manifest = read_json(data_dir / MANIFEST)
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{data_dir}: dataset format {manifest.get('format')!r}, "
            f"expected {FORMAT_VERSION}; prepare it again"
        )
    if tokenizer_hash is not None and manifest["tokenizer_hash"] != tokenizer_hash:
        raise DataError(
            f"{data_dir}: shards were made with tokenizer {manifest['tokenizer_hash']}, "
            f"not {tokenizer_hash}; prepare them again"
        )
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            path = data_dir / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * itemsize:
                raise DataError(f"{path}: shard missing or truncated; prepare the dataset again")
    return manifest


def open_split(
    data_dir: str | os.PathLike, split: str, manifest: dict[str, Any]
) -> list[np.ndarray]:
    """Read-only memory maps of the shards of `split`, in stream order."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    dtype = np.dtype(manifest["dtype"])
    return [
        np.memmap(Path(data_dir) / shard["file"], dtype=dtype, mode="r")
        for shard in manifest["splits"][split]["shards"]
        if shard["tokens"] > 0
    ]
