"""Train a tokenizer on a corpus source and measure its compression on held-out documents.

The held-out documents are the `val` split of `parcae.data.split` with the same fraction, so the
reported bytes per token is measured on the text that `parcae data prepare` will validate on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from parcae.data.sources import iter_documents
from parcae.data.split import DEFAULT_VAL_FRACTION, check_val_fraction, split_of
from parcae.data.tokenizer import Tokenizer, check_vocab_size
from parcae.errors import ConfigError, DataError
from parcae.outputs import check_not_file, output_directory

HELDOUT_CHARS = 1 << 24  # held-out text kept in memory to measure compression


@dataclass
class TokenizerReport:
    """Outcome of `train_tokenizer`; `heldout_bytes_per_token` is None without held-out
    documents."""

    tokenizer: Tokenizer
    path: Path
    train_documents: int
    train_chars: int
    heldout_documents: int
    heldout_bytes_per_token: float | None
    train_bytes_per_token: float
    seconds: float


class _Partition:
    """Streams the training documents while setting aside (up to HELDOUT_CHARS of) the
    held-out ones."""

    def __init__(
        self,
        input_spec: str,
        text_field: str,
        val_fraction: float,
        max_chars: int | None,
        progress: bool,
    ):
        self.source = (input_spec, text_field)
        self.val_fraction, self.max_chars, self.progress = val_fraction, max_chars, progress
        self.heldout: list[str] = []
        self.heldout_documents = self.heldout_chars = self.documents = self.chars = 0
        self.first_train = ""

    def __iter__(self) -> Iterator[str]:
        documents = tqdm(
            iter_documents(*self.source),
            desc="tokenizer",
            unit="doc",
            delay=1.0,
            disable=not self.progress,
        )
        for text in documents:
            if split_of(text, self.val_fraction) == "val":
                self.heldout_documents += 1
                if self.heldout_chars < HELDOUT_CHARS:
                    self.heldout.append(text)
                    self.heldout_chars += len(text)
                continue
            if self.max_chars is not None and self.chars >= self.max_chars:
                break
            self.first_train = self.first_train or text
            self.documents += 1
            self.chars += len(text)
            yield text
        if self.documents == 0:
            raise DataError(
                f"{self.source[0]}: all {self.heldout_documents} documents fall in the held-out "
                "split; lower --val-fraction"
            )


def train_tokenizer(
    input_spec: str,
    vocab_size: int,
    out_dir: str | os.PathLike,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    text_field: str = "text",
    max_chars: int | None = None,
    progress: bool = True,
) -> TokenizerReport:
    """Train on the `train` documents of `input_spec` (at most `max_chars` characters), save to
    `out_dir`."""
    check_val_fraction(val_fraction)
    check_vocab_size(vocab_size)
    if max_chars is not None and max_chars <= 0:
        raise ConfigError(f"max chars must be positive, got {max_chars}")
    check_not_file(out_dir, "tokenizer directory")
    start = time.perf_counter()
    partition = _Partition(input_spec, text_field, val_fraction, max_chars, progress)
    tokenizer = Tokenizer.train(partition, vocab_size)
    seconds = time.perf_counter() - start
    path = tokenizer.save(output_directory(out_dir, "tokenizer directory"))
    return TokenizerReport(
        tokenizer=tokenizer,
        path=path,
        train_documents=partition.documents,
        train_chars=partition.chars,
        heldout_documents=partition.heldout_documents,
        heldout_bytes_per_token=(
            tokenizer.bytes_per_token(partition.heldout) if partition.heldout else None
        ),
        train_bytes_per_token=tokenizer.bytes_per_token([partition.first_train]),
        seconds=seconds,
    )
