"""Packed, deterministic, resumable batches of token rows from a prepared split.

A split is one token stream `x` of length T (its shards concatenated, a BOS before every
document). Row k is `x[k·S : k·S + S + 1]` for S = seq_len: consecutive rows overlap by one
token, so every token after the first is a target exactly once per epoch and nothing is padding.
Rows per epoch: `R = (T - 1) // S`; only the tail of `T - 1 - R·S` targets is dropped, so

    packing_efficiency = R·S / (T - 1)        tokens_per_epoch = R·S.

Training order: epoch e visits the rows in the permutation `default_rng((seed, e))`; epochs are
concatenated into one infinite sequence of global rows. Step t consumes the global rows
[t·B·W, (t+1)·B·W) for B = batch_size and W = world_size, and rank r takes its slice
[t·B·W + r·B, t·B·W + (r+1)·B): ranks are disjoint and their union is the 1-process batch of
B·W rows. The state is the number of global rows consumed, so resuming is exact.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parcae.data.shards import load_manifest, open_split
from parcae.errors import ConfigError, DataError


@dataclass
class Batch:
    """Next-token prediction rows: inputs and targets, (batch, seq_len) int64 each."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.inputs.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
        )


class TokenStream:
    """The shards of a split read as one array: `read(start, length)` may cross shards.
    `name` (the split, for errors) and `vocab_size` (every id must be below it) come from the
    manifest."""

    def __init__(
        self, shards: list[np.ndarray], name: str = "tokens", vocab_size: int | None = None
    ):
        self.shards, self.name, self.vocab_size = shards, name, vocab_size
        self.offsets = np.cumsum([0] + [len(shard) for shard in shards]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def read(self, start: int, length: int) -> np.ndarray:
        """(length,) int64 tokens from position `start`."""
        pieces, end = [], start + length
        index = bisect.bisect_right(self.offsets, start) - 1
        while start < end:
            shard, base = self.shards[index], self.offsets[index]
            piece = shard[start - base : min(end - base, len(shard))]
            pieces.append(piece)
            start += len(piece)
            index += 1
        return np.concatenate(pieces).astype(np.int64)


def _make_batch(stream: TokenStream, rows: list[int], seq_len: int) -> Batch:
    """The batch of the given row indices (row k = stream[k·S : k·S + S + 1])."""
    tokens = np.stack([stream.read(row * seq_len, seq_len + 1) for row in rows])  # (B, S+1)
    if stream.vocab_size is not None and tokens.max() >= stream.vocab_size:
        row = rows[int(np.argmax(tokens.max(axis=1)))]
        raise DataError(
            f"{stream.name}: row {row} holds token id {tokens.max()}, outside the vocabulary "
            f"of {stream.vocab_size} ids; the shards are corrupt or come from another "
            "tokenizer: prepare the dataset again"
        )
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    return Batch(torch.from_numpy(inputs.copy()), torch.from_numpy(targets.copy()))


def _open(
    data_dir: str | os.PathLike, split: str, batch_size: int, seq_len: int
) -> tuple[TokenStream, dict, int]:
    """The split's stream, the manifest and the number of rows per epoch (validated)."""
    if batch_size <= 0 or seq_len <= 0:
        raise ConfigError(
            f"batch size and seq_len must be positive, got {batch_size} and {seq_len}"
        )
    manifest = load_manifest(data_dir)
    stream = TokenStream(
        open_split(data_dir, split, manifest), f"{data_dir} ({split})", manifest["vocab_size"]
    )
    rows = max(len(stream) - 1, 0) // seq_len
    if rows == 0:
        raise DataError(
            f"{data_dir}: split {split!r} has {len(stream)} tokens, "
            f"fewer than seq_len + 1 = {seq_len + 1}"
            + ("; prepare with a larger --val-fraction" if split == "val" else "")
        )
    return stream, manifest, rows


class RowLoader:
    """The training order of a split of `rows_per_epoch` rows, for one rank (see the module
    docstring): subclasses set `rows_per_epoch` and `identity` (what a saved position is only
    valid for) and build a batch from row indices in `make_batch`."""

    rows_per_epoch: int
    identity: dict[str, Any]

    def __init__(self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.cursor = 0  # global rows consumed by all ranks together
        self._permutations: dict[int, np.ndarray] = {}

    def make_batch(self, rows: list[int]) -> Batch:
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        """The epoch of the next global row."""
        return self.cursor // self.rows_per_epoch

    def _row(self, global_row: int) -> int:
        epoch, index = divmod(global_row, self.rows_per_epoch)
        if epoch not in self._permutations:
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            rng = np.random.default_rng((self.seed, epoch))
            self._permutations[epoch] = rng.permutation(self.rows_per_epoch)
        return int(self._permutations[epoch][index])

    def next_batch(self) -> Batch:
        """This rank's B rows of the next global step, then advance by B·W global rows."""
        first = self.cursor + self.rank * self.batch_size
        rows = [self._row(g) for g in range(first, first + self.batch_size)]
        self.cursor += self.batch_size * self.world_size
        return self.make_batch(rows)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The exact position (same on every rank), plus what it is only valid for."""
        return {"cursor": self.cursor, "seed": self.seed, **self.identity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state["cursor"]`; refuses a state from another seed or `identity`
        (split, seq_len, dataset)."""
        mine = self.state_dict()
        for key in ("seed", *self.identity):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"loader state has {key}={state.get(key)!r}, "
                    f"this loader {mine[key]!r}; cannot resume"
                )
        self.cursor = int(state["cursor"])


class TokenLoader(RowLoader):
    """Infinite shuffled batches of packed rows of a prepared split, for one rank."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, seed, rank, world_size)
        self.stream, manifest, self.rows_per_epoch = _open(data_dir, split, batch_size, seq_len)
        self.data_dir, self.split, self.seq_len = Path(data_dir), split, seq_len
        self.tokenizer_hash = manifest["tokenizer_hash"]
        self.identity = {
            "seq_len": seq_len,
            "split": split,
            "tokens": len(self.stream),
            "tokenizer_hash": self.tokenizer_hash,
        }

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens in one pass over the split: R·S."""
        return self.rows_per_epoch * self.seq_len

    @property
    def packing_efficiency(self) -> float:
        """Fraction of the split's targets that rows cover: R·S / (T - 1); no padding anywhere."""
        return self.tokens_per_epoch / (len(self.stream) - 1)

    def make_batch(self, rows: list[int]) -> Batch:
        return _make_batch(self.stream, rows, self.seq_len)


def iter_eval_batches(
    data_dir: str | os.PathLike,
    split: str,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> Iterator[Batch]:
    """Every row of `split` once, in order, B rows per batch (the last batch may be smaller)."""
    stream, _, rows = _open(data_dir, split, batch_size, seq_len)
    starts = range(0, rows, batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in starts:
        batch_rows = list(range(start, min(start + batch_size, rows)))
        yield _make_batch(stream, batch_rows, seq_len)
