"""FLOPs per token against hand counts from the built model's weights, and expected depths
against exact sums and the sampler itself."""

from __future__ import annotations

import math

import pytest
import torch

import parcae
from parcae.model.flops import expected_depth, forward_flops_per_token, training_flops_per_token
from parcae.model.recurrence import sample_depth_plan

SEQ_LEN = 48
SMALL = dict(
    vocab_size=100, padding_multiple=64, context_length=64, d_model=64, ffn_dim=160, n_heads=4
)
PARCAE = dict(SMALL, n_prelude=1, n_core=2, n_coda=3, mean_recurrence=6, mean_backprop_depth=2)
GPT = dict(SMALL, n_layers=5)
VARIANTS = {
    "diagonal": dict(injection="diagonal"),
    "diagonal-zoh": dict(injection="diagonal", discretization="zoh"),
    "linear": dict(injection="linear"),
    "add": dict(injection="add"),
    "no-value-embeddings": dict(value_embeddings=False),
    "gqa": dict(n_kv_heads=2),
    "untied": dict(tie_embeddings=False),
}


def hand_count(model) -> dict[str, int]:
    """Weights that multiply each token, by where they run: `once` per forward (blocks outside
    the loop, injection input matrix, C, head) or every loop `step` (core blocks, the
    injection's state matrix). Lookups (token and value embeddings), norm weights and the
    diagonal injection's per-channel A_log / dt_bias do no matmul."""
    counts = {"once": 0, "step": 0}
    d = model.config.d_model
    for name, weight in model.named_parameters(remove_duplicate=False):
        if name == "lm_head.weight" or name == "transformer.C.weight":
            counts["once"] += weight.numel()
        elif name.startswith("transformer.core_block."):
            counts["step"] += weight.numel() if weight.dim() == 2 else 0
        elif name.startswith(("transformer.prelude.", "transformer.coda.", "transformer.h.")):
            counts["once"] += weight.numel() if weight.dim() == 2 else 0
        elif name == "transformer.adapter.B":  # B̄ e, computed once
            counts["once"] += weight.numel()
        elif name == "transformer.adapter.adapter.weight":  # W [h; e]: W_h per step, W_e once
            assert weight.shape == (d, 2 * d)
            counts["step"] += d * d
            counts["once"] += d * d
        else:
            assert (
                name
                in (
                    "transformer.wte.weight",
                    "transformer.ln_f.weight",
                    "transformer.ln_prelude.weight",
                    "transformer.adapter.A_log",
                    "transformer.adapter.dt_bias",
                )
                or name.startswith("value_embeds.")
                or ".norm_" in name
            ), name
    return counts


def attention_per_layer(config) -> float:
    """Forward FLOPs of QKᵀ and AV per token and layer: each is a multiply-add (2 FLOPs) per
    query head, head channel and visible key, and a causal query sees S/2 keys on average."""
    visible_keys = SEQ_LEN / 2
    return 2 * (2 * config.n_heads * config.head_dim * visible_keys)


def test_the_hand_count_sees_every_matmul_weight_of_the_blocks():
    config = parcae.ParcaeConfig(**PARCAE, n_kv_heads=2)
    counts = hand_count(parcae.create_model(config, device="meta"))
    d, ff, hd = 64, 160, 16
    block = d * (4 * hd) * 2 + d * (2 * hd) * 2 + 2 * d * ff  # q, proj; k, v; fc, mlp.proj
    gate = 32 * 2
    # 6 layers: value embeddings in layers 1, 3, 5 (i % 2 == 5 % 2): core 1, coda 3 and 5
    assert counts["step"] == 2 * block + gate
    assert counts["once"] == 4 * block + 2 * gate + d * d + d * d + 128 * d  # B, C, head


@pytest.mark.parametrize("variant", VARIANTS)
def test_parcae_forward_flops_match_the_hand_count(variant):
    config = parcae.ParcaeConfig(**{**PARCAE, **VARIANTS[variant]})
    counts = hand_count(parcae.create_model(config, device="meta"))
    attention = attention_per_layer(config)
    outside = config.n_prelude + config.n_coda
    for steps in (0, 1, 5):
        expected = (
            2 * counts["once"]
            + attention * outside
            + steps * (2 * counts["step"] + attention * config.n_core)
        )
        assert forward_flops_per_token(config, SEQ_LEN, steps) == pytest.approx(expected, rel=1e-12)
    assert forward_flops_per_token(config, SEQ_LEN) == forward_flops_per_token(config, SEQ_LEN, 6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parcae_training_flops_match_the_hand_count(variant):
    config = parcae.ParcaeConfig(**{**PARCAE, **VARIANTS[variant]})
    counts = hand_count(parcae.create_model(config, device="meta"))
    attention = attention_per_layer(config)
    depth = expected_depth(config)
    step_forward = 2 * counts["step"] + attention * config.n_core
    # forward + backward = 3 × forward, except the no-grad steps (forward only)
    expected = (
        3 * (2 * counts["once"] + attention * (config.n_prelude + config.n_coda))
        + depth.no_grad * step_forward
        + 3 * depth.grad * step_forward
    )
    assert training_flops_per_token(config, SEQ_LEN) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("variant", ["default", "no-value-embeddings", "gqa", "untied"])
def test_gpt_flops_match_the_hand_count(variant):
    config = parcae.GPTConfig(**{**GPT, **VARIANTS.get(variant, {})})
    counts = hand_count(parcae.create_model(config, device="meta"))
    assert counts["step"] == 0
    forward = 2 * counts["once"] + attention_per_layer(config) * config.n_layers
    assert forward_flops_per_token(config, SEQ_LEN) == pytest.approx(forward, rel=1e-12)
    assert training_flops_per_token(config, SEQ_LEN) == pytest.approx(3 * forward, rel=1e-12)


def test_forward_flops_grow_linearly_in_depth_by_one_core_pass():
    config = parcae.ParcaeConfig(**PARCAE)
    core_weights = hand_count(parcae.create_model(config, device="meta"))["step"]
    slope = 2 * core_weights + config.n_core * attention_per_layer(config)
    flops = [forward_flops_per_token(config, SEQ_LEN, steps) for steps in range(8)]
    assert [b - a for a, b in zip(flops, flops[1:])] == pytest.approx([slope] * 7, rel=1e-12)


def test_fixed_depth_training_costs_one_forward_per_no_grad_step_and_three_per_grad_step():
    config = parcae.ParcaeConfig(**PARCAE, sampling_scheme="fixed")  # n = 6 - 2 = 4, k = 2
    at = [forward_flops_per_token(config, SEQ_LEN, steps) for steps in (0, 1)]
    slope = at[1] - at[0]
    assert training_flops_per_token(config, SEQ_LEN) == pytest.approx(
        3 * at[0] + 4 * slope + 3 * 2 * slope, rel=1e-12
    )


def test_attention_grows_with_the_sequence_and_gqa_does_not_change_it():
    config = parcae.ParcaeConfig(**PARCAE, value_embeddings=False)
    grouped = config.replace(n_kv_heads=1)
    layers = config.n_prelude + config.n_coda + 6 * config.n_core
    d = config.d_model
    difference = forward_flops_per_token(config, 2 * SEQ_LEN) - forward_flops_per_token(
        config, SEQ_LEN
    )
    assert difference == pytest.approx(layers * 2 * d * SEQ_LEN, rel=1e-12)
    # one kv head instead of four: k and v shrink by 3/4 each, the attention itself does not
    saved = 2 * 2 * d * (d - d // 4) * (config.n_prelude + config.n_coda + 6 * config.n_core)
    assert forward_flops_per_token(config, SEQ_LEN) - forward_flops_per_token(
        grouped, SEQ_LEN
    ) == pytest.approx(saved, rel=1e-12)


def test_paper_preset_training_flops_from_its_table_row():
    """parcae-140m (d 768, ff 3072, 6 heads, 2/2/2 layers, V 32768) at S = 2048, counted from
    the preset table alone: a block has q, k, v, proj (4·d²) and fc, proj (2·d·ff); distinct
    layers 1, 3 and 5 carry a value-embedding gate (32 × 6 kv heads), layer 3 in the core."""
    config = parcae.preset_config("parcae-140m")
    depth = expected_depth(config)
    d, ff, vocab, seq = 768, 3072, 32768, 2048
    block, gate = 4 * d * d + 2 * d * ff, 32 * 6
    core = 2 * block + gate
    once = 4 * block + 2 * gate + d * d + d * d + vocab * d  # + B, C, head
    attention = 2 * d * seq  # 2·H·hd·S
    expected = (
        6 * once
        + 3 * attention * 4
        + (2 * core + attention * 2) * depth.no_grad
        + (6 * core + 3 * attention * 2) * depth.grad
    )
    assert training_flops_per_token(config, seq) == pytest.approx(expected, rel=1e-12)


def _poisson(rate: float, j: int) -> float:
    return math.exp(-rate) * rate**j / math.factorial(j)


def exact_depth(scheme: str, t: int, s: int) -> tuple[float, float]:
    """E[n], E[k] by summing the Poisson distribution term by term."""
    if scheme in ("fixed", "poisson"):
        return float(t), float(s)
    terms = [(max(j, 1), _poisson(t + s, j)) for j in range(100)]  # N = max(X, 1)
    total = sum(p * n for n, p in terms)
    if scheme == "poisson-full":
        return 0.0, total
    grad = sum(p * min(n, s) for n, p in terms)
    return total - grad, grad


SCHEMES = ["fixed", "poisson", "poisson-full", "poisson-truncated-full"]
DEPTHS = [(8, 4), (6, 2), (3, 3), (2, 5), (1, 1)]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mean_recurrence, mean_backprop_depth", DEPTHS)
def test_expected_depth_is_the_exact_expectation(scheme, mean_recurrence, mean_backprop_depth):
    config = parcae.ParcaeConfig(
        **{
            **PARCAE,
            "sampling_scheme": scheme,
            "mean_recurrence": mean_recurrence,
            "mean_backprop_depth": mean_backprop_depth,
        }
    )
    t = max(mean_recurrence - mean_backprop_depth, 0)
    depth = expected_depth(config)
    assert (depth.no_grad, depth.grad) == pytest.approx(
        exact_depth(scheme, t, mean_backprop_depth), rel=1e-12, abs=1e-12
    )


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mean_recurrence, mean_backprop_depth", [(8, 4), (2, 5)])
def test_expected_depth_matches_the_sampler(scheme, mean_recurrence, mean_backprop_depth):
    config = parcae.ParcaeConfig(
        **{
            **PARCAE,
            "sampling_scheme": scheme,
            "mean_recurrence": mean_recurrence,
            "mean_backprop_depth": mean_backprop_depth,
        }
    )
    rows = 200_000
    plan = sample_depth_plan(config, rows, 1, torch.Generator().manual_seed(0))
    depth = expected_depth(config)
    for draws, mean in ((plan.no_grad_steps, depth.no_grad), (plan.grad_steps, depth.grad)):
        draws = draws.double()
        tolerance = 5 * float(draws.std()) / math.sqrt(rows) + 1e-12  # 5 standard errors
        assert abs(float(draws.mean()) - mean) <= tolerance
