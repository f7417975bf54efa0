"""The cached forward: prelude -> T loop steps -> coda over a `KVCache`, with adaptive depth.

One function serves prefill (S prompt tokens at once) and decoding (S = 1): the new columns are
registered in the cache, every attention site writes its keys and values into its slot and
attends over the slot's columns so far. Inference runs a fixed number of loop steps T (no depth
sampling) from the deterministic eval-mode initial state at each token's position.

Adaptive depth (per token): after loop step t a token exits when its criterion falls below
`eps`: its state is frozen and, at every later step, the cache receives its last keys and values
(so later tokens attend to what it last computed). T stays the maximum; eps = 0 never exits and
equals the fixed-depth forward. Criteria (`EXIT_CRITERIA`):

- `residual`: ‖h_{t+1} - h_t‖ / ‖h_t‖ (free: no extra compute);
- `kl`: KL(p_t || p_{t+1}) between the next-token distributions of successive steps, each from
  a coda + head pass over C h_t (costs a coda and head per step; intermediate coda passes attend
  to the cached final coda keys of earlier tokens). With `kl`, a prefill in one pass and token by
  token differ slightly (tokens of one pass see each other's intermediate coda keys); with
  `residual` they are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from parcae.errors import PromptError
from parcae.infer.cache import KVCache
from parcae.model.base import LanguageModel
from parcae.model.layers import Block
from parcae.model.parcae import Parcae

EXIT_CRITERIA = ("residual", "kl")


@dataclass
class ForwardOutput:
    """logits: float32 (B, S, V_pad) (or (B, 1, V_pad) for the last column only);
    steps: int64 (B, S), loop steps each token ran (T for every token without adaptive depth;
    0 for a GPT)."""

    logits: Tensor
    steps: Tensor


def _block(block: Block, x: Tensor, rope, value_embed, mask: Tensor, cache: KVCache, slot: int,
           frozen: Tensor | None = None, previous_slot: int | None = None) -> Tensor:
    attn = block.attn
    q, k, v = attn.project(block.norm_1(x), rope, value_embed)
    k, v = cache.write(slot, k, v, frozen, previous_slot)
    x = x + attn.attend(q, k, v, mask)
    return x + block.mlp(block.norm_2(x))


def _relative_update(new: Tensor, old: Tensor) -> Tensor:
    """‖new - old‖ / ‖old‖ per token, (B, S), in float32."""
    delta = (new - old).float().norm(dim=-1)
    return delta / old.float().norm(dim=-1).clamp_min(1e-12)


@torch.no_grad()
def cached_forward(model: LanguageModel, input_ids: Tensor, valid: Tensor, cache: KVCache,
                   state_table: Tensor | None = None, adaptive_eps: float | None = None,
                   last_only: bool = False, criterion: str = "residual") -> ForwardOutput:
    """Run S new tokens input_ids (B, S) through `model`, reading and extending `cache`.

    valid: bool (B, S), False at left padding. state_table: the Parcae's eval-mode h_0 per
    position (`Parcae.eval_state_table`), None for zero init. The loop runs `cache.num_steps`
    steps, fewer per token with `adaptive_eps` (exit `criterion`: residual or kl).
    """
    batch, seq = input_ids.shape
    start_positions = cache.next_positions()
    positions = start_positions[:, None] + valid.long().cumsum(dim=1) - 1
    positions = positions.clamp_min(0)
    mask = cache.begin(valid, positions)
    rope = (model.rope_cos[positions], model.rope_sin[positions])
    value_embeds = model.value_embeddings(input_ids)
    t = model.transformer
    x = t.wte(input_ids)

    if not isinstance(model, Parcae):
        for i, block in enumerate(t.h):
            x = _block(block, x, rope, value_embeds.get(i), mask, cache, i)
        steps = torch.zeros(batch, seq, dtype=torch.long, device=x.device)
    else:
        config = model.config
        for i, block in enumerate(t.prelude):
            x = _block(block, x, rope, value_embeds.get(i), mask, cache, i)
        e = t.ln_prelude(x) if config.prelude_norm else x
        prepared = t.adapter.prepare(e)
        core_embeds = [value_embeds.get(config.n_prelude + j) for j in range(config.n_core)]
        h = torch.zeros_like(e) if state_table is None else state_table[positions].to(e.dtype)

        def coda(h: Tensor) -> Tensor:
            y = t.C(h)
            first_coda = config.n_prelude + config.n_core
            for j, block in enumerate(t.coda):
                y = _block(block, y, rope, value_embeds.get(first_coda + j), mask, cache,
                           cache.coda_slot(j))
            return y

        exit_score = None
        if adaptive_eps is not None:
            exit_score = _exit_score(model, coda, criterion)
        h, steps = _loop(model, h, prepared, core_embeds, rope, mask, cache, adaptive_eps,
                         exit_score)
        x = coda(h)
    cache.advance(seq)
    if last_only:
        x = x[:, -1:]
    logits, _ = model.head(x, None)
    return ForwardOutput(logits=logits, steps=steps)


def _exit_score(model: Parcae, coda, criterion: str):
    """score(h_new, h_old) -> (B, S) float, exit when below eps (+inf: not yet comparable)."""
    if criterion not in EXIT_CRITERIA:
        raise PromptError(f"unknown adaptive-depth criterion {criterion!r}; use "
                          f"{' or '.join(EXIT_CRITERIA)}")
    if criterion == "residual":
        return _relative_update
    vocab = model.config.vocab_size
    previous: list[Tensor] = []

    def kl(new: Tensor, old: Tensor) -> Tensor:
        logits, _ = model.head(coda(new), None)
        log_p = torch.log_softmax(logits[..., :vocab], dim=-1)
        if not previous:
            previous.append(log_p)
            return torch.full(log_p.shape[:-1], float("inf"), device=log_p.device)
        before = previous[0]
        previous[0] = log_p
        # KL >= 0; rounding can make a converged token's KL a hair negative (and eps = 0
        # must never exit)
        return (before.exp() * (before - log_p)).sum(dim=-1).clamp_min(0)

    return kl


def _loop(model: Parcae, h: Tensor, prepared: Tensor, core_embeds, rope, mask: Tensor,
          cache: KVCache, adaptive_eps: float | None, exit_score) -> tuple[Tensor, Tensor]:
    """T = cache.num_steps loop steps over h (B, S, d); returns h_T and steps per token."""
    t = model.transformer
    batch, seq = h.shape[:2]
    num_steps = cache.num_steps
    steps = torch.zeros(batch, seq, dtype=torch.long, device=h.device)
    frozen = None if adaptive_eps is None else torch.zeros_like(steps, dtype=torch.bool)
    for step in range(num_steps):
        if frozen is not None and bool(frozen.all()):
            for j in range(model.config.n_core):  # hand the last keys to the skipped steps
                for skipped in range(step, num_steps):
                    cache.copy_columns(cache.core_slot(j, skipped - 1),
                                       cache.core_slot(j, skipped), seq)
            break
        x = t.adapter.step(h, prepared)
        for j, (block, value_embed) in enumerate(zip(t.core_block, core_embeds)):
            previous = cache.core_slot(j, step - 1) if step > 0 else None
            x = _block(block, x, rope, value_embed, mask, cache, cache.core_slot(j, step),
                       frozen if step > 0 else None, previous)
        if frozen is None:
            h = x
            steps += 1
            continue
        active = ~frozen
        steps += active.long()
        x = torch.where(active[..., None], x, h)
        converged = exit_score(x, h) < adaptive_eps
        h = x
        frozen = frozen | (active & converged)
    return h, steps
