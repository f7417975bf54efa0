"""Tokenise a corpus once into binary shards (see `parcae.data.shards` for the format).

Each document goes to `train` or `val` by `parcae.data.split.split_of` (a hash of its text).
Documents are tokenised in batches in parallel on all cores; as soon as `shard_tokens` tokens
are buffered (at a document end), both splits' buffers become shards and `progress.json` records
them, so an interrupted run resumes from its last shard. The manifest is written last; re-running
a finished preparation with the same arguments is a no-op.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from parcae.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS,
    SPLITS,
    atomic_write_json,
    load_manifest,
    read_json,
    shard_name,
    token_dtype,
    write_shard,
)
from parcae.data.sources import iter_documents
from parcae.data.split import DEFAULT_VAL_FRACTION, check_val_fraction, split_of
from parcae.data.tokenizer import Tokenizer
from parcae.errors import ConfigError, DataError
from parcae.outputs import check_not_file, output_directory

__all__ = ["prepare_dataset", "load_manifest"]

DEFAULT_SHARD_TOKENS = 1 << 25
BATCH_CHARS = 1 << 22


def _batches(documents: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    """Group documents into lists of about `batch_chars` characters (one tokenizer call each)."""
    batch, chars = [], 0
    for document in documents:
        batch.append(document)
        chars += len(document)
        if chars >= batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class _SplitBuffer:
    """Token arrays of one split waiting to become a shard, with their document and byte counts."""

    def __init__(self):
        self.arrays: list[np.ndarray] = []
        self.tokens = self.documents = self.bytes = 0

    def add(self, ids: np.ndarray, n_bytes: int) -> None:
        self.arrays.append(ids)
        self.tokens += len(ids)
        self.documents += 1
        self.bytes += n_bytes


def _identity(
    input_spec: str, text_field: str, tokenizer: Tokenizer, val_fraction: float
) -> dict[str, Any]:
    """What makes two preparations the same: resuming or reusing requires equal identities."""
    return {
        "source": input_spec,
        "text_field": text_field,
        "tokenizer_hash": tokenizer.hash,
        "val_fraction": val_fraction,
    }


def _check_same(found: dict[str, Any], wanted: dict[str, Any], out_dir: Path) -> None:
    if found["tokenizer_hash"] != wanted["tokenizer_hash"]:
        raise DataError(
            f"{out_dir}: holds shards made with another tokenizer ({found['tokenizer_hash']}, not "
            f"{wanted['tokenizer_hash']}); use another --out or delete it"
        )
    for key in ("source", "text_field", "val_fraction"):
        if found[key] != wanted[key]:
            raise DataError(
                f"{out_dir}: was prepared with {key}={found[key]!r}, "
                f"not {wanted[key]!r}; use another --out or delete it"
            )


def _fresh_state(identity: dict[str, Any], tokenizer: Tokenizer) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        **identity,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "dtype": token_dtype(tokenizer.vocab_size).str,
        "documents_read": 0,
        "splits": {
            split: {"documents": 0, "tokens": 0, "bytes": 0, "shards": []} for split in SPLITS
        },
    }


def _flush(out_dir: Path, state: dict[str, Any], buffers: dict[str, _SplitBuffer]) -> None:
    """Turn every non-empty buffer into a shard, then record them (and the documents read) in
    the progress file."""
    for split, buffer in buffers.items():
        if buffer.tokens == 0:
            continue
        record = state["splits"][split]
        name = shard_name(split, len(record["shards"]))
        write_shard(out_dir / name, np.concatenate(buffer.arrays).astype(state["dtype"]))
        record["shards"].append(
            {"file": name, "tokens": buffer.tokens, "documents": buffer.documents}
        )
        for key in ("tokens", "documents", "bytes"):
            record[key] += getattr(buffer, key)
        buffers[split] = _SplitBuffer()
    atomic_write_json(out_dir / PROGRESS, state)


def prepare_dataset(
    input_spec: str,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    text_field: str = "text",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenise `input_spec` with the tokenizer in `tokenizer_dir` into shards under `out_dir`.

    Returns the manifest: per split `documents`, `tokens` (BOS included), `bytes` (UTF-8 bytes of
    the documents) and `shards`, plus the source, tokenizer hash, vocab size, BOS id and dtype.
    """
    check_val_fraction(val_fraction)
    if shard_tokens <= 0:
        raise ConfigError(f"shard tokens must be positive, got {shard_tokens}")
    out_dir = check_not_file(out_dir, "data directory")
    tokenizer = Tokenizer.load(tokenizer_dir)
    identity = _identity(input_spec, text_field, tokenizer, val_fraction)
    if (out_dir / MANIFEST).is_file():
        manifest = load_manifest(out_dir)
        _check_same(manifest, identity, out_dir)
        return manifest
    if (out_dir / PROGRESS).is_file():
        state = read_json(out_dir / PROGRESS)
        _check_same(state, identity, out_dir)
    else:
        state = _fresh_state(identity, tokenizer)
    output_directory(out_dir, "data directory")

    bos = np.array([tokenizer.bos_id], dtype=np.int64)
    buffers = {split: _SplitBuffer() for split in SPLITS}
    documents = itertools.islice(
        iter_documents(input_spec, text_field), state["documents_read"], None
    )
    with tqdm(
        desc="prepare", unit="doc", initial=state["documents_read"], delay=1.0, disable=not progress
    ) as bar:
        for batch in _batches(documents, BATCH_CHARS):
            for text, ids in zip(batch, tokenizer.encode_batch(batch)):
                buffer = buffers[split_of(text, val_fraction)]
                buffer.add(np.concatenate([bos, ids]), len(text.encode()))
                state["documents_read"] += 1
                if sum(buffer.tokens for buffer in buffers.values()) >= shard_tokens:
                    _flush(out_dir, state, buffers)
            bar.update(len(batch))
            written = sum(state["splits"][split]["tokens"] for split in SPLITS)
            bar.set_postfix(tokens=written + sum(buffer.tokens for buffer in buffers.values()))
    _flush(out_dir, state, buffers)

    tokenizer.save(out_dir)
    manifest = {key: value for key, value in state.items() if key != "documents_read"}
    atomic_write_json(out_dir / MANIFEST, manifest)
    (out_dir / PROGRESS).unlink()
    return manifest
