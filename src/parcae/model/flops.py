"""FLOPs per token (ARCHITECTURE §6.1), counted from the config so they hold on any device.

A matmul with a weight of N entries costs 2·N FLOPs per token forward and 6·N forward+backward.
Causal attention adds, per layer and token, 2·(H·hd)·S forward (QKᵀ and AV, each
2·H·hd·(S/2) on average over causal positions). Counted: q, k, v, proj, fc, mlp.proj, the
value-embedding gates, the injection's matrices, C and the LM head. Not counted: embedding and
value-embedding lookups (no arithmetic), norms, RoPE, softmax and elementwise work.

Training (per sampled depth, expectations over the sampler):

    F_train = 6·(N_prelude + N_coda + N_inject + N_C + N_head) + 3·A·(Lp + Ld)
              + E[n]·(2·N_core + A·Lc) + E[k]·(6·N_core + 3·A·Lc) + 6·N_step·E[k] + 2·N_step·E[n]

with A = 2·H·hd·S the forward attention FLOPs per layer, N_core the core blocks' matmul
weights and N_step the injection weights applied on every step (W_h for `linear`, else 0).
A GPT is `6·(N_blocks + N_head) + 3·A·L`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from parcae.model.config import VALUE_EMBED_GATE_CHANNELS, ParcaeConfig, TransformerConfig
from parcae.model.injection import INJECTIONS
from parcae.model.recurrence import DepthPlan


def block_matmul_params(config: TransformerConfig, has_value_embedding: bool) -> int:
    """Weights of one block that take part in a matmul (norm weights excluded)."""
    q_width = config.n_heads * config.head_dim
    kv_width = config.n_kv_heads * config.head_dim
    attention = config.d_model * (2 * q_width + 2 * kv_width)
    mlp = 2 * config.d_model * config.ffn_dim
    gate = VALUE_EMBED_GATE_CHANNELS * config.n_kv_heads if has_value_embedding else 0
    return attention + mlp + gate


def attention_flops(config: TransformerConfig, seq_len: int) -> float:
    """Forward causal-attention FLOPs per token and layer: 2·(H·hd)·S."""
    return 2.0 * config.n_heads * config.head_dim * seq_len


@dataclass(frozen=True)
class ExpectedDepth:
    """Mean loop steps per row without (`no_grad`) and with (`grad`) gradient."""

    no_grad: float
    grad: float


def _poisson_pmf(rate: float, k: int) -> float:
    return math.exp(-rate + k * math.log(rate) - math.lgamma(k + 1)) if rate > 0 else float(k == 0)


def expected_depth(config: ParcaeConfig) -> ExpectedDepth:
    """E[n], E[k] of the training sampler at full depth (after any curriculum)."""
    t = max(config.mean_recurrence - config.mean_backprop_depth, 0)
    s = config.mean_backprop_depth
    rate = t + s
    if config.sampling_scheme in ("fixed", "poisson"):
        return ExpectedDepth(t, s)
    p_zero = _poisson_pmf(rate, 0)
    if config.sampling_scheme == "poisson-full":
        return ExpectedDepth(0.0, rate + p_zero)
    # poisson-truncated-full: N = max(Poisson(rate), 1), k = min(N, s), n = N - k
    upper = int(rate + 20 * math.sqrt(rate + 1) + 20)
    mean_total = rate + p_zero
    mean_grad = p_zero * 1 + sum(_poisson_pmf(rate, j) * min(j, s) for j in range(1, upper))
    return ExpectedDepth(mean_total - mean_grad, mean_grad)


def plan_depth(plan: DepthPlan) -> ExpectedDepth:
    """The mean no-gradient and gradient loop steps per token of a drawn `plan`."""
    return ExpectedDepth(
        float(plan.no_grad_steps.double().mean()), float(plan.grad_steps.double().mean())
    )


def _blocks_params(config: TransformerConfig, layers: range) -> int:
    return sum(block_matmul_params(config, config.has_value_embedding(i)) for i in layers)


def _outer_and_step(config: TransformerConfig, seq_len: int) -> tuple[float, float]:
    """Forward FLOPs per token (outside the loop, one loop step): 2 per matmul weight plus
    attention. Outside: prelude and coda blocks (every block of a GPT), the LM head, and for a
    looped model the injection's once-per-forward weights and C; a step: the core blocks and
    the injection's per-step weights."""
    d, attention = config.d_model, attention_flops(config, seq_len)
    outer_layers = len(config.prelude_layers) + len(config.coda_layers)
    outer = (
        _blocks_params(config, config.prelude_layers)
        + _blocks_params(config, config.coda_layers)
        + d * config.padded_vocab_size
    )
    step = 0
    if config.is_looped:
        inject_once, inject_step = INJECTIONS[config.injection].matmul_weights(d, d)
        outer += inject_once + d * d  # and C
        step = _blocks_params(config, config.core_layers) + inject_step
    return (
        2.0 * outer + attention * outer_layers,
        2.0 * step + attention * len(config.core_layers),
    )


def forward_flops_per_token(
    config: TransformerConfig, seq_len: int, num_steps: int | None = None
) -> float:
    """Inference FLOPs per token at loop depth `num_steps` (default μ_rec; ignored for GPT)."""
    outer, step = _outer_and_step(config, seq_len)
    if not config.is_looped:
        return outer
    return outer + (config.default_depth if num_steps is None else num_steps) * step


def training_flops_per_token(
    config: TransformerConfig, seq_len: int, depth: ExpectedDepth | None = None
) -> float:
    """Forward+backward FLOPs per trained token at mean loop depths `depth` (default: the
    sampler's expected depths; a step's own plan gives its actual FLOPs): 3x forward outside
    the loop and in gradient steps, 1x in no-gradient steps."""
    outer, step = _outer_and_step(config, seq_len)
    if not config.is_looped:
        return 3.0 * outer
    depth = expected_depth(config) if depth is None else depth
    return 3.0 * outer + (depth.no_grad + 3.0 * depth.grad) * step
