"""Adaptive test-time depth: per-token early exit, bounded by T, exact at eps = 0, and the same
whether tokens are computed in one pass or one by one through the cache."""

import pytest
import torch

from parcae.errors import PromptError
from parcae.infer.engine import ResidualExit, exit_rule
from parcae.infer.generate import GenerationStats, generate
from parcae.model import DepthPlan

IDS = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(5))


def run(model, ids, num_steps, eps, prefill=None, sharing="full", criterion="residual"):
    """Logits and loop steps per token, in one pass (prefill=None) or prefill + one by one."""
    batch, seq = ids.shape
    cache = model.new_cache(batch, seq, num_steps, sharing)
    cuts = [0, seq] if prefill is None else [0, *range(prefill, seq + 1)]
    outs = [
        model(
            ids[:, a:b], cache=cache, exit_rule=exit_rule(eps, criterion, model.config.vocab_size)
        )
        for a, b in zip(cuts, cuts[1:])
    ]
    return torch.cat([o.logits for o in outs], 1), torch.cat([o.loop.steps for o in outs], 1)


def test_eps_zero_equals_fixed_depth(parcae_model):
    fixed, steps = run(parcae_model, IDS, 6, None)
    adaptive, adaptive_steps = run(parcae_model, IDS, 6, 0.0)
    assert torch.equal(adaptive, fixed)
    assert bool((adaptive_steps == 6).all()) and bool((steps == 6).all())


@pytest.mark.parametrize("eps", [0.05, 0.2, 1e9])
def test_exit_never_exceeds_max_depth(parcae_model, eps):
    _, steps = run(parcae_model, IDS, 5, eps)
    assert bool((steps >= 1).all()) and bool((steps <= 5).all())


def test_huge_eps_exits_after_one_step(parcae_model):
    logits, steps = run(parcae_model, IDS, 5, 1e9)
    assert bool((steps == 1).all())
    assert (logits - parcae_model(IDS, num_steps=1).logits).abs().max() < 1e-5


def test_some_tokens_exit_early_at_a_moderate_eps(varied_model):
    _, full = run(varied_model, IDS, 8, 0.0)
    _, steps = run(varied_model, IDS, 8, 0.2)
    assert steps.float().mean() < full.float().mean()
    assert steps.unique().numel() >= 3  # a mix of early and late exits


def test_incremental_adaptive_equals_one_pass(varied_model):
    """Tokens that exited hand their last keys/values to later steps in both paths."""
    one_pass, steps = run(varied_model, IDS, 8, 0.2)
    incremental, incremental_steps = run(varied_model, IDS, 8, 0.2, prefill=5)
    assert steps.unique().numel() >= 3  # a mix of early and late exits
    assert torch.equal(steps, incremental_steps)
    assert (one_pass - incremental).abs().max() < 1e-5


@pytest.mark.parametrize("sharing", ["ring:2", "last:2", "shared"])
def test_adaptive_depth_works_with_shared_slots(parcae_model, sharing):
    logits, steps = run(parcae_model, IDS, 6, 0.2, prefill=5, sharing=sharing)
    assert torch.isfinite(logits).all()
    assert bool((steps >= 1).all()) and bool((steps <= 6).all())


def test_generate_with_adaptive_depth_reports_steps(parcae_model):
    stats = GenerationStats()
    generate(parcae_model, [1, 2, 3, 4], 8, num_steps=6, temperature=0, adaptive=0.2, stats=stats)
    assert 1 <= stats.mean_steps <= 6
    assert stats.new_tokens == [8]
    fixed = generate(parcae_model, [1, 2, 3, 4], 8, num_steps=6, temperature=0)
    assert torch.equal(
        generate(parcae_model, [1, 2, 3, 4], 8, num_steps=6, temperature=0, adaptive=0.0), fixed
    )


def test_kl_criterion_eps_zero_equals_fixed_depth(parcae_model):
    fixed, _ = run(parcae_model, IDS, 4, None)
    adaptive, steps = run(parcae_model, IDS, 4, 0.0, criterion="kl")
    assert (adaptive - fixed).abs().max() < 1e-5
    assert bool((steps == 4).all())


def test_kl_criterion_compares_two_steps_before_exiting(parcae_model):
    logits, steps = run(parcae_model, IDS, 5, 1e9, prefill=6, criterion="kl")
    assert bool((steps == 2).all())
    assert (logits - parcae_model(IDS, num_steps=2).logits).abs().max() < 1e-5


def test_unknown_criterion_is_one_error(parcae_model):
    with pytest.raises(PromptError, match="criterion"):
        generate(parcae_model, [1, 2], 2, adaptive=0.1, adaptive_criterion="entropy")


def test_a_per_token_depth_plan_replays_the_exits_of_inference(varied_model):
    """Per-token depth in training and early exit at inference are one semantics: a token that
    stopped keeps its state and its last keys and values. Replaying the exits as a per-token
    plan (the training path, with gradients on) gives the same logits."""
    logits, steps = run(varied_model, IDS, 8, 0.2)
    assert steps.unique().numel() >= 3
    plan = DepthPlan(torch.zeros_like(steps), steps, torch.zeros(2, dtype=torch.long))
    with torch.enable_grad():
        replayed = varied_model(IDS, depth_plan=plan)
    assert replayed.logits.requires_grad
    assert (replayed.logits - logits).abs().max() < 1e-5
    assert torch.equal(replayed.loop.steps, steps)


def test_exit_rule_without_a_cache_equals_the_cached_pass(varied_model):
    logits, steps = run(varied_model, IDS, 8, 0.2)
    with torch.no_grad():
        out = varied_model(IDS, num_steps=8, exit_rule=ResidualExit(0.2))
    assert torch.equal(out.loop.steps, steps)
    assert (out.logits - logits).abs().max() < 1e-5
