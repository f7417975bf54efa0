"""A recurrence-aware KV cache: preallocated keys and values per (layer, loop step).

Every attention site of a forward owns a *slot*: each prelude and coda layer one, each core
layer one per loop step (the core's weights are shared across steps, its keys and values are
not). A slot is a pair of preallocated tensors (B, Hkv, L_max, hd); a forward of S tokens writes
columns [length, length + S) of every slot it visits and attends over columns [0, length + S),
so decoding one token costs O(length) attention and no per-token Python objects.

Cache sharing bounds the memory of the core: a `CacheSharing` maps loop step t of T to one of
fewer slots, and a step that reads a slot written by another step sees that step's keys for
earlier tokens (an approximation; `full` is exact):

- `full`: one slot per step (T slots per core layer);
- `ring:m`: slot t mod m (Huginn-style circular sharing; `ring:1` = one slot for all steps);
- `last:m`: steps T-m .. T-1 keep their own slots, every earlier step shares the first of them.

Columns are a shared timeline: with left padding, row b's real tokens start at its own column,
`valid` marks the columns that hold real tokens and `positions` their per-row positions (RoPE and
the eval-mode state noise use positions, so a padded row computes what it computes alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from parcae.errors import PromptError
from parcae.model.base import LanguageModel
from parcae.model.parcae import Parcae

SHARING_KINDS = ("full", "ring", "last")


@dataclass(frozen=True)
class CacheSharing:
    """How the T loop steps of a core layer map to cache slots (see the module docstring)."""

    kind: str = "full"
    window: int = 0  # m for `ring` and `last`

    @classmethod
    def parse(cls, spec: "str | CacheSharing | None") -> "CacheSharing":
        """`full`, `ring:M`, `last:M` or `shared` (= `ring:1`)."""
        if spec is None:
            return cls()
        if isinstance(spec, CacheSharing):
            return spec
        name, _, window = str(spec).partition(":")
        if name == "shared" and not window:
            return cls("ring", 1)
        if name == "full" and not window:
            return cls()
        if name in ("ring", "last") and window.isdigit() and int(window) > 0:
            return cls(name, int(window))
        raise PromptError(f"unknown cache sharing {spec!r}; use full, shared, ring:M or last:M "
                          f"(M a positive integer)")

    def num_slots(self, num_steps: int) -> int:
        if self.kind == "full":
            return num_steps
        return min(self.window, num_steps)

    def slot(self, step: int, num_steps: int) -> int:
        """Slot of loop step `step` (0-based) among `num_slots(num_steps)`."""
        if self.kind == "full":
            return step
        if self.kind == "ring":
            return step % self.window
        return max(step - (num_steps - self.num_slots(num_steps)), 0)

    def __str__(self) -> str:
        return self.kind if self.kind == "full" else f"{self.kind}:{self.window}"


class KVCache:
    """Keys and values of every attention site, for `batch` rows and up to `max_length` columns.

    keys, values: (n_slots, B, Hkv, L_max, hd); valid: bool (B, L_max); positions: int64
    (B, L_max); length: columns filled so far.
    """

    def __init__(self, model: LanguageModel, batch: int, max_length: int, num_steps: int = 0,
                 sharing: "str | CacheSharing | None" = None, device=None, dtype=None) -> None:
        config = model.config
        parameter = next(model.parameters())
        device = parameter.device if device is None else device
        dtype = parameter.dtype if dtype is None else dtype
        self.sharing = CacheSharing.parse(sharing)
        self.num_steps = num_steps
        if isinstance(model, Parcae):
            self.core_slots = self.sharing.num_slots(num_steps)
            self.first_core = config.n_prelude
            self.first_coda = config.n_prelude + config.n_core * self.core_slots
            n_slots = self.first_coda + config.n_coda
        else:
            self.core_slots = self.first_core = 0
            self.first_coda = n_slots = config.n_layers
        shape = (n_slots, batch, config.n_kv_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_length, dtype=torch.bool, device=device)
        self.positions = torch.zeros(batch, max_length, dtype=torch.long, device=device)
        self.length = 0
        self.max_length = max_length

    # ------------------------------------------------------------ addressing
    # Prelude layer i (or GPT layer i) uses slot i; then the core; then the coda.

    def coda_slot(self, index: int) -> int:
        return self.first_coda + index

    def core_slot(self, index: int, step: int) -> int:
        """Slot of core layer `index` (0-based within the core) at loop step `step`."""
        return self.first_core + index * self.core_slots + self.sharing.slot(step, self.num_steps)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    # ------------------------------------------------------------ a forward's columns

    def begin(self, valid: Tensor, positions: Tensor) -> Tensor:
        """Register the next S columns (valid, positions: (B, S)) and return the attention
        mask of their queries, bool (B, 1, S, length + S): causal over columns, padding keys
        hidden, and every query sees its own column (so a padding query is never empty)."""
        seq = valid.shape[1]
        start, end = self.length, self.length + seq
        if end > self.max_length:
            raise PromptError(f"the cache holds {self.max_length} tokens; cannot add {seq} "
                              f"to {self.length}")
        self.valid[:, start:end] = valid
        self.positions[:, start:end] = positions
        columns = torch.arange(end, device=valid.device)
        query_columns = columns[start:end, None]
        causal = columns[None, :] <= query_columns
        allowed = causal & (self.valid[:, None, :end] | (columns[None, :] == query_columns))
        return allowed[:, None]

    def write(self, slot: int, k: Tensor, v: Tensor, frozen: Tensor | None = None,
              previous_slot: int | None = None) -> tuple[Tensor, Tensor]:
        """Store k, v (B, Hkv, S, hd) at the current columns of `slot` and return the slot's
        keys and values over columns [0, length + S). Tokens marked `frozen` (B, S) exited the
        loop: they keep the keys and values they hold in `previous_slot`."""
        seq = k.shape[2]
        start, end = self.length, self.length + seq
        if frozen is not None and previous_slot is not None:
            keep = frozen[:, None, :, None]
            k = torch.where(keep, self.keys[previous_slot, :, :, start:end], k)
            v = torch.where(keep, self.values[previous_slot, :, :, start:end], v)
        self.keys[slot, :, :, start:end] = k
        self.values[slot, :, :, start:end] = v
        return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]

    def copy_columns(self, source: int, target: int, seq: int) -> None:
        """Copy the current S columns of slot `source` into slot `target` (a loop that ended
        early hands its last keys and values to the steps it skipped)."""
        if source != target:
            start, end = self.length, self.length + seq
            self.keys[target, :, :, start:end] = self.keys[source, :, :, start:end]
            self.values[target, :, :, start:end] = self.values[source, :, :, start:end]

    def reserve(self, seq: int) -> None:
        """Make room for S more columns, doubling the capacity when it runs out (for callers
        that do not know the final length, such as transformers' `generate`)."""
        needed = self.length + seq
        if needed <= self.max_length:
            return
        pad = max(needed, 2 * self.max_length) - self.max_length
        self.keys = F.pad(self.keys, (0, 0, 0, pad))
        self.values = F.pad(self.values, (0, 0, 0, pad))
        self.valid = F.pad(self.valid, (0, pad))
        self.positions = F.pad(self.positions, (0, pad))
        self.max_length += pad

    def advance(self, seq: int) -> None:
        """Commit the S columns written by the forward that just ran."""
        self.length += seq

    def next_positions(self) -> Tensor:
        """(B,) the position of each row's next token."""
        if self.length == 0:
            return torch.zeros(self.valid.shape[0], dtype=torch.long, device=self.valid.device)
        return self.valid[:, :self.length].sum(dim=1)
