"""The decode step: one new token per row over a `KVCache`, run by the model's own forward in
the cache's fixed-shape mode (`FixedShapeCache`, its attention site `FixedShapeSite`).

In that mode every shape is static over the preallocated cache: the new columns' keys and
values are written at columns given as a tensor, and attention runs over all `max_length`
columns under the validity mask (columns past the new ones are never valid), and the loop runs
in lockstep (`parcae.model.loop.LockstepSchedule`). The same graph therefore serves every step:
`torch.compile` compiles it once (`DecodeStep(compile=True)`) and the ONNX export traces it
(`parcae.export.onnx`); eagerly, decoding skips the general cached forward's slicing, per-step
mask building and id range check. The logits are what `model(tokens[:, None], cache=cache)`
computes, within fp32 rounding (the same ops; only the attention's summation order over the
hidden columns differs).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from parcae.model.cache import CacheLayout, KVCache, column_mask, initial_state, new_positions
from parcae.model.layers import CausalSelfAttention
from parcae.model.loop import Active

_WARNED = False


def compiler_available() -> bool:
    """Whether inductor's C++ backend can build CPU kernels (a C++ compiler on PATH)."""
    try:
        from torch._inductor import cpp_builder

        compiler = cpp_builder.get_cpp_compiler()
        return shutil.which(compiler) is not None or os.path.exists(compiler)
    except Exception:
        return shutil.which("g++") is not None or shutil.which("clang++") is not None


def decode_step(model, cache: KVCache, compile: bool = False) -> DecodeStep:
    """The `DecodeStep` of `model` for `cache`: one per cache layout (loop depth, sharing) and
    `compile`, kept on the model, so that a compiled step is compiled once and reused by later
    calls (a new batch size recompiles once)."""
    steps = model.__dict__.setdefault("_decode_steps", {})
    key = (cache.num_steps, str(cache.sharing), cache.keys.shape[0], compile)
    if key not in steps:
        steps[key] = DecodeStep(model, cache, compile)
    step = steps[key]
    step.cache = cache
    return step


class DecodeStep:
    """`step(tokens (B,) int64) -> logits (B, V_pad)` float32 for the next column of `cache`,
    which it commits (length + 1). With `compile=True` the forward runs under `torch.compile`
    (one graph for every step); without a C++ compiler on a CPU model it warns once and stays
    eager."""

    def __init__(self, model, cache: KVCache, compile: bool = False) -> None:
        self.model, self.cache = model, cache
        self.function, self.compiled = self._step, False
        if compile:
            device = next(model.parameters()).device
            if device.type == "cpu" and not compiler_available():
                global _WARNED
                if not _WARNED:  # one line on stderr, once per process
                    print(
                        "parcae: warning: compile=True needs a C++ compiler (g++ or clang++) "
                        "for CPU kernels; none found, decoding eagerly",
                        file=sys.stderr,
                    )
                    _WARNED = True
            else:
                self.function = torch.compile(self._step, dynamic=False)
                self.compiled = True

    @torch.no_grad()
    def __call__(self, tokens: Tensor) -> Tensor:
        cache = self.cache
        if cache.length + 1 > cache.max_length:
            cache.reserve(1)
        column = torch.full((1,), cache.length, dtype=torch.long, device=tokens.device)
        logits = self.function(
            tokens,
            column,
            cache.keys,
            cache.values,
            cache.valid,
            cache.positions,
            cache.state_table,
        )
        cache.length += 1
        return logits

    def _step(self, tokens, column, keys, values, valid, positions, state_table) -> Tensor:
        """The model's forward of tokens (B,) at `column` over the cache's tensors (graph
        inputs, so that a compiled step follows `reserve`, which replaces them)."""
        owner = self.cache
        cache = FixedShapeCache(
            owner.layout, keys, values, valid, positions, state_table, column, owner.num_steps
        )
        return self.model(tokens[:, None], cache=cache, last_only=True).logits[:, 0]


class FixedShapeCache:
    """The fixed-shape mode of a cache: a forward whose every shape is independent of how many
    columns are filled, so that one graph serves every decode step (`torch.compile`d decoding,
    the ONNX export) and eager decoding needs no slicing.

    Storage as in `KVCache`: keys, values (n_slots, B, Hkv, L, hd) laid out by `layout` (or
    lists of n_slots tensors (B, Hkv, L, hd), each replaced when written, see `FixedShapeSite`),
    valid
    bool (B, L), positions int64 (B, L), state_table (context_length, d_r) or None. `column`:
    int64 (1,), the first new column, a tensor (a graph input, not a constant). `num_steps`: the
    loop depth (default the layout's; fewer runs a shallower loop over a `full` layout's first
    slots, as a `leading_rows` view of a deeper cache does). A forward of S
    tokens writes columns [column, column + S) of every slot it visits, in place, and its
    queries attend over all L columns under `column_mask`: columns past the new ones are never
    valid (`KVCache` keeps `valid` False from `length` on), so the mask hides them. Lockstep
    loops only (no early exit). The owner of the storage commits the columns (`KVCache.length`).
    """

    def __init__(
        self,
        layout: CacheLayout,
        keys: Tensor,
        values: Tensor,
        valid: Tensor,
        positions: Tensor,
        state_table: Tensor | None,
        column: Tensor,
        num_steps: int | None = None,
    ) -> None:
        self.layout = layout
        self.num_steps = layout.num_steps if num_steps is None else num_steps
        self.keys, self.values, self.valid, self.positions = keys, values, valid, positions
        self.state_table, self.column = state_table, column
        (batch, kv_heads), device = keys[0].shape[:2], keys[0].device
        # index tensors of the leading dims (slot, row, head), for writes at new columns
        self.slot_ids = torch.arange(len(keys), device=device).view(-1, 1, 1, 1)
        self.rows = torch.arange(batch, device=device).view(1, batch, 1, 1)
        self.heads = torch.arange(kv_heads, device=device).view(1, 1, kv_heads, 1)
        self.queries: Tensor | None = None
        self.mask: Tensor | None = None

    def begin(self, valid: Tensor) -> Tensor:
        """Register S new columns at `column` (valid: bool (B, S)); returns their positions
        (B, S) and sets `mask` (B, 1, S, L), as `KVCache.begin`."""
        self.queries = self.column + torch.arange(valid.shape[1], device=valid.device)
        positions = new_positions(self.valid.sum(dim=1), valid)
        at = (self.rows[0, :, :, 0], self.queries[None])  # (B, 1), (1, S)
        self.valid.index_put_(at, valid)
        self.positions.index_put_(at, positions)
        columns = torch.arange(self.valid.shape[1], device=valid.device)
        self.mask = column_mask(self.valid, columns, self.queries)
        return positions

    def site(self, layer: int, active: Active | None = None) -> FixedShapeSite:
        return FixedShapeSite(self, self.layout.slot(layer, 0 if active is None else active.step))

    def initial_state(self, positions: Tensor, like: Tensor) -> Tensor:
        return initial_state(self.state_table, positions, like)

    def advance(self) -> None:
        """Nothing to commit here: the storage's owner counts the columns."""


@dataclass
class FixedShapeSite:
    """Slot `slot` of a `FixedShapeCache`: k, v written at the new columns, then attention over
    every column under the mask. The write, by what holds the storage:
    - eagerly, an `index_copy_` into the slot (4x cheaper than the compiled form);
    - compiled, one index tensor per leading dim (slot, row, head, column) into the whole
      storage, not a view, so that the graph updates its input in place;
    - a list of per-slot tensors (the ONNX export): a new tensor per slot (`scatter`), which
      onnxruntime writes into a copy of that slot alone; an in-place write into the whole
      storage would copy all of it at every layer (6x slower decoding)."""

    cache: FixedShapeCache
    slot: int

    def attend(self, attn: CausalSelfAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        cache = self.cache
        if isinstance(cache.keys, list):  # one tensor per slot: a new one for each write
            index = cache.queries.view(1, 1, -1, 1).expand_as(k)
            cache.keys[self.slot] = cache.keys[self.slot].scatter(2, index, k)
            cache.values[self.slot] = cache.values[self.slot].scatter(2, index, v)
        elif torch.compiler.is_compiling():
            slot = cache.slot_ids[self.slot : self.slot + 1]
            at = (slot, cache.rows, cache.heads, cache.queries.view(1, 1, 1, -1))
            cache.keys.index_put_(at, k[None])  # k, v (B, Hkv, S, hd)
            cache.values.index_put_(at, v[None])
        else:  # eagerly, the same write into the slot's view: one cheap kernel
            cache.keys[self.slot].index_copy_(2, cache.queries, k)
            cache.values[self.slot].index_copy_(2, cache.queries, v)
        keys, values = cache.keys[self.slot], cache.values[self.slot]  # (B, Hkv, L, hd)
        if q.shape[2] == 1 and torch.compiler.is_compiling():
            return attend_one(q, keys, values, cache.mask)  # SDPA would copy the slot
        return attn.mix(q, keys, values, cache.mask)


def attend_one(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Softmax attention of one query per row, q (B, H, 1, hd), over keys, values
    (B, Hkv, L, hd) where mask (B, 1, 1, L) is True -> heads (B, 1, H*hd), as products and
    sums, which inductor fuses into reductions that read the cache in place."""
    batch, heads, _, head_dim = q.shape
    groups = keys.shape[1]
    q = q.view(batch, groups, heads // groups, 1, head_dim)  # GQA: query heads per kv head
    scores = (q * keys[:, :, None]).sum(-1) * head_dim**-0.5  # (B, Hkv, rep, L)
    scores = scores.masked_fill(~mask[:, :, None, 0], float("-inf"))
    weights = scores.softmax(dim=-1)
    out = (weights[..., None] * values[:, :, None]).sum(-2)  # (B, Hkv, rep, hd)
    return out.reshape(batch, 1, heads * head_dim)
