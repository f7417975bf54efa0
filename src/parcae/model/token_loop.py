"""Per-token loop depth that computes only the tokens still active at each step.

Token i runs its own N_i = n_i + k_i loop steps, all tokens starting together at step 0: steps
t < n_i without gradient, steps n_i <= t < N_i with gradient (truncated backprop through depth).
At step t only the active tokens (t < N_i) are projected and run through the MLP; attention
reads every token's keys and values, and a token that has finished keeps those of its last step
(the semantics of early exit with a KV cache at inference).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from parcae.model.layers import Block
from parcae.model.recurrence import DepthPlan, LoopStats

KeyValues = tuple[Tensor, Tensor]


def _truncate(tensor: Tensor, grad_mask: Tensor | None) -> Tensor:
    """Detach the rows of `tensor` (N, ...) whose token is in a no-gradient step."""
    if grad_mask is None:
        return tensor
    return torch.where(grad_mask.view(-1, *[1] * (tensor.dim() - 1)), tensor, tensor.detach())


def block_on_tokens(block: Block, x: Tensor, index: tuple[Tensor, Tensor],
                    rope: tuple[Tensor, Tensor], value_embed: Tensor | None,
                    kv: KeyValues | None, batch_shape: tuple[int, int],
                    grad_mask: Tensor | None) -> tuple[Tensor, KeyValues]:
    """Apply `block` to the active tokens only.

    x: (N, d) the active tokens, at (rows, positions) = `index`; rope: cos, sin (N, hd/2) of
    their positions; value_embed: (N, Hkv*hd) or None; kv: keys and values of every token,
    (B, S, Hkv, hd) each (None before the first step); grad_mask: (N,) tokens in a gradient
    step, or None when all are. Returns the new x (N, d) and kv with the active entries replaced.
    """
    attn = block.attn
    q, k, v = attn.project(block.norm_1(x)[None], rope,
                           None if value_embed is None else value_embed[None])
    q, k, v = (t[0].transpose(0, 1) for t in (q, k, v))  # (N, heads, hd)
    k, v = _truncate(k, grad_mask), _truncate(v, grad_mask)
    if kv is None:
        kv = (k.new_zeros(*batch_shape, *k.shape[1:]), v.new_zeros(*batch_shape, *v.shape[1:]))
    keys, values = kv[0].index_put(index, k), kv[1].index_put(index, v)

    rows = index[0].unique(sorted=True)  # only rows holding an active token attend
    local = (torch.searchsorted(rows, index[0]), index[1])
    queries = q.new_zeros(len(rows), batch_shape[1], *q.shape[1:]).index_put(local, q)
    heads = attn.mix(queries.transpose(1, 2), keys[rows].transpose(1, 2),
                     values[rows].transpose(1, 2))
    x = x + attn.c_proj(heads[local])
    x = x + block.mlp(block.norm_2(x))
    return _truncate(x, grad_mask), (keys, values)


def iterate_tokens(core: nn.ModuleList, injection: nn.Module, prepared: Tensor, h: Tensor,
                   plan: DepthPlan, rope: tuple[Tensor, Tensor],
                   value_embeds: list[Tensor | None]) -> tuple[Tensor, LoopStats]:
    """The loop with per-token depths `plan` ((B, S) step counts).

    h, prepared: (B, S, d) initial state and injected input (`injection.prepare(e)`); rope:
    cos, sin (S, hd/2); value_embeds: per core layer (B, S, Hkv*hd) or None.
    """
    batch_shape = (h.shape[0], h.shape[1])
    no_grad_steps = plan.no_grad_steps.to(h.device)
    total = plan.total_steps.to(h.device)
    tracking = torch.is_grad_enabled()
    kv: list[KeyValues | None] = [None] * len(core)
    residual = torch.zeros(h.shape[0], device=h.device)
    executed = 0
    for step in range(int(total.max()) if total.numel() else 0):
        index = (total > step).nonzero(as_tuple=True)
        grad_mask = no_grad_steps[index] <= step if tracking else None
        any_grad = grad_mask is not None and bool(grad_mask.any())
        if grad_mask is not None and bool(grad_mask.all()):
            grad_mask = None
        with contextlib.nullcontext() if any_grad else torch.no_grad():
            h_active = h[index]
            x = injection.step(h_active, prepared[index])
            token_rope = (rope[0][index[1]], rope[1][index[1]])
            for layer, block in enumerate(core):
                embed = value_embeds[layer]
                x, kv[layer] = block_on_tokens(block, x, index, token_rope,
                                               None if embed is None else embed[index],
                                               kv[layer], batch_shape, grad_mask)
        with torch.no_grad():
            rows = index[0]
            delta = torch.zeros_like(residual).index_add_(
                0, rows, (x - h_active).float().square().sum(-1))
            norm = torch.zeros_like(residual).index_add_(0, rows, x.float().square().sum(-1))
            updated = rows.unique()
            residual[updated] = (delta[updated] / norm[updated].clamp_min(1e-24)).sqrt()
        h = h.index_put(index, x)
        executed += rows.numel()
    with torch.no_grad():
        stats = LoopStats(state_norm=h.detach().float().norm(dim=-1).mean(),
                          residual=residual.mean(), mean_steps=float(total.float().mean()),
                          executed_steps=executed, sampled_steps=int(total.sum()))
    return h, stats
