"""The single-token decode step: one new token per row over a `KVCache`, without the general
forward's per-token machinery (schedules, `Active` gathers, mask building over a growing
length, id range checks). It computes what `LanguageModel.forward(tokens, cache=cache)`
computes for a (B, 1) step of valid tokens with no exit rule (same ops, same order), so its
logits equal the general path's within fp32 rounding.

Shapes are static over the preallocated cache: the new column's keys and values are written at
a column given as a tensor, and attention runs over all `max_length` columns with the cache's
`valid` row as the mask (columns past the new one are never valid). The same graph therefore
serves every step, which is what lets `torch.compile` compile it once (`compile=True`).
"""

from __future__ import annotations

import os
import shutil
import sys

import torch
from torch import Tensor

from parcae.model.cache import KVCache

_WARNED = False


def compiler_available() -> bool:
    """Whether inductor's C++ backend can build CPU kernels (a C++ compiler on PATH)."""
    try:
        from torch._inductor import cpp_builder

        compiler = cpp_builder.get_cpp_compiler()
        return shutil.which(compiler) is not None or os.path.exists(compiler)
    except Exception:
        return shutil.which("g++") is not None or shutil.which("clang++") is not None


def attend_one(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Softmax attention of one query per row, q (B, H, 1, hd), over keys, values
    (B, Hkv, L, hd) where mask (B, 1, 1, L) is True -> heads (B, 1, H*hd), as products and
    sums (which inductor fuses into reductions over the cache in place)."""
    batch, heads, _, head_dim = q.shape
    groups = keys.shape[1]
    q = q.view(batch, groups, heads // groups, 1, head_dim)  # GQA: query heads per kv head
    scores = (q * keys[:, :, None]).sum(-1) * head_dim**-0.5  # (B, Hkv, rep, L)
    scores = scores.masked_fill(~mask[:, :, None, 0], float("-inf"))
    weights = scores.softmax(dim=-1)
    out = (weights[..., None] * values[:, :, None]).sum(-2)  # (B, Hkv, rep, hd)
    return out.reshape(batch, 1, heads * head_dim)


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
    which it commits (length + 1). With `compile=True` the tensor work runs under
    `torch.compile` (one graph for every step); without a C++ compiler on a CPU model it warns
    once and stays eager."""

    def __init__(self, model, cache: KVCache, compile: bool = False) -> None:
        self.model, self.cache = model, cache
        config = model.config
        blocks = model.blocks()
        self.prelude = [(i, blocks[i]) for i in config.prelude_layers]
        self.coda = [(i, blocks[i]) for i in config.coda_layers]
        self.slots_prelude = [cache.slot(i) for i in config.prelude_layers]
        self.slots_coda = [cache.slot(i) for i in config.coda_layers]
        if config.is_looped:
            self.core = [(i, blocks[i]) for i in config.core_layers]
            self.slots_core = [
                [cache.slot(i, t) for i, _ in self.core] for t in range(cache.num_steps)
            ]
        self.slot_ids = torch.arange(cache.keys.shape[0], device=cache.keys.device)
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

    def _attend(self, block, x, rope, value_embed, slot, keys, values, column, mask):
        """Block.forward with the cache write at `column` and attention over all columns."""
        attn = block.attn
        q, k, v = attn.project(block.norm_1(x), rope, value_embed)
        at = self.slot_ids[slot : slot + 1]  # index the whole cache (not a view: in place)
        keys[at, :, :, column] = k.permute(2, 0, 1, 3)  # (1, B, Hkv, hd)
        values[at, :, :, column] = v.permute(2, 0, 1, 3)
        if self.compiled:  # a fused reduction reads the slot in place (SDPA would copy it)
            heads = attend_one(q, keys[slot], values[slot], mask)
        else:
            heads = attn.mix(q, keys[slot], values[slot], mask)
        x = x + attn.c_proj(heads)
        return x + block.mlp(block.norm_2(x))

    def _step(self, tokens, column, keys, values, valid, positions, state_table):
        model = self.model
        config = model.config
        ids = tokens[:, None]
        position = valid.sum(dim=1, keepdim=True)  # (B, 1): the rows' real tokens so far
        valid.index_fill_(1, column, True)
        positions.index_copy_(1, column, position)
        mask = valid[:, None, None, :]  # (B, 1, 1, L): earlier real columns and the new one
        rope = (model.rope_cos[position], model.rope_sin[position])
        value_embeds = model.value_embeddings(ids)
        x = model.transformer.wte(ids)
        for (layer, block), slot in zip(self.prelude, self.slots_prelude):
            x = self._attend(
                block, x, rope, value_embeds.get(layer), slot, keys, values, column, mask
            )
        if config.is_looped:
            t = model.transformer
            e = t.ln_prelude(x) if config.prelude_norm else x
            prepared = t.adapter.prepare(e)
            h = torch.zeros_like(e) if state_table is None else state_table[position].to(e.dtype)
            for slots in self.slots_core:
                x = t.adapter.step(h, prepared)
                for (layer, block), slot in zip(self.core, slots):
                    x = self._attend(
                        block, x, rope, value_embeds.get(layer), slot, keys, values, column, mask
                    )
                h = x
            x = t.C(h)
        for (layer, block), slot in zip(self.coda, self.slots_coda):
            x = self._attend(
                block, x, rope, value_embeds.get(layer), slot, keys, values, column, mask
            )
        return model.head(x, None)[0][:, 0]
