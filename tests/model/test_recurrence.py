"""Depth sampling, truncated backprop through depth, and loop work accounting."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import parcae
from parcae.model.flops import expected_depth
from parcae.model.injection import DiagonalInjection
from parcae.model.recurrence import DepthPlan, sample_depth_plan
from parcae.train.evaluator import loop_diagnostics

SMALL = dict(
    vocab_size=64,
    d_model=32,
    ffn_dim=64,
    n_heads=1,
    context_length=16,
    value_embeddings=False,
    n_prelude=1,
    n_core=1,
    n_coda=1,
)


@pytest.mark.parametrize("scheme", ["poisson-truncated-full", "poisson-full", "poisson", "fixed"])
@pytest.mark.parametrize("granularity", ["per-batch", "per-sequence", "per-token"])
def test_sampled_depth_means_match_the_scheme(scheme, granularity):
    config = parcae.ParcaeConfig(
        sampling_scheme=scheme,
        depth_granularity=granularity,
        mean_recurrence=8,
        mean_backprop_depth=4,
        **SMALL,
    )
    generator = torch.Generator().manual_seed(0)
    draws = [sample_depth_plan(config, 64, 8, generator) for _ in range(100)]
    no_grad = torch.stack([d.no_grad_steps.float().mean() for d in draws]).mean()
    grad = torch.stack([d.grad_steps.float().mean() for d in draws]).mean()
    expected = expected_depth(config)
    assert abs(no_grad - expected.no_grad) < 0.2 and abs(grad - expected.grad) < 0.2
    assert abs((no_grad + grad) - 8) < (0.25 if scheme != "poisson-truncated-full" else 0.3)
    assert all(bool((d.total_steps >= 1).all()) for d in draws)
    if scheme == "poisson-truncated-full":
        assert all(bool((d.grad_steps <= 4).all()) for d in draws)
    shape = (64, 8) if granularity == "per-token" else (64,)
    assert draws[0].no_grad_steps.shape == shape
    if granularity == "per-batch":
        assert draws[0].total_steps.unique().numel() == 1


def test_curriculum_ramps_the_no_grad_depth():
    config = parcae.ParcaeConfig(
        mean_recurrence=8,
        mean_backprop_depth=4,
        curriculum_steps=100,
        sampling_scheme="fixed",
        **SMALL,
    )
    depths = [int(sample_depth_plan(config, 1, 4, step=s).no_grad_steps[0]) for s in (0, 50, 100)]
    assert depths == [0, 2, 4]


def test_num_steps_runs_exactly_that_many_steps_in_train_and_eval():
    model = parcae.create_model("parcae-tiny", **SMALL)
    ids = torch.randint(0, 64, (3, 12))
    for mode in (model.train, model.eval):
        mode()
        out = model(ids, num_steps=5)
        assert out.loop.executed_steps == out.loop.sampled_steps == 15
        assert out.loop.mean_steps == 5


def test_eval_defaults_to_mean_recurrence_and_is_deterministic():
    model = parcae.create_model("parcae-tiny", state_init="like-init", **SMALL).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        first, second = model(ids), model(ids)
    assert first.loop.mean_steps == model.config.mean_recurrence
    assert torch.equal(first.logits, second.logits)
    # the eval state depends only on position: a row alone equals the same row in a batch
    with torch.no_grad():
        assert torch.allclose(model(ids[1:]).logits, first.logits[1:], atol=1e-5)


def test_training_samples_depth_per_sequence():
    model = parcae.create_model("parcae-tiny", **SMALL).train()
    ids = torch.randint(0, 64, (32, 8))
    torch.manual_seed(0)
    depths = {model(ids).loop.sampled_steps for _ in range(5)}
    assert len(depths) > 1


class _CoreCallRecorder:
    """Records, for each call of the first core block, its batch size and whether grad is on."""

    def __init__(self, model):
        self.calls: list[tuple[int, bool]] = []
        model.transformer.core_block[0].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls.append((inputs[0].shape[0], torch.is_grad_enabled()))


def test_executed_loop_work_equals_sampled_work_per_sequence():
    model = parcae.create_model("parcae-tiny", **SMALL).train()
    recorder = _CoreCallRecorder(model)
    generator = torch.Generator().manual_seed(3)
    plan = model.sample_depth_plan(16, 8, generator)
    assert plan.total_steps.unique().numel() > 2  # rows really differ in depth
    out = model(torch.randint(0, 64, (16, 8)), depth_plan=plan)
    executed_rows = sum(batch for batch, _ in recorder.calls)
    assert executed_rows == int(plan.total_steps.sum()) == out.loop.executed_steps
    # far fewer than running every row to the batch maximum, as the official code does
    assert executed_rows < 16 * int(plan.total_steps.max())
    no_grad_rows = sum(batch for batch, grad in recorder.calls if not grad)
    assert no_grad_rows == int(plan.no_grad_steps.sum())


def test_truncated_backprop_gives_no_gradient_through_the_first_steps():
    torch.manual_seed(0)
    model = parcae.create_model("parcae-tiny", state_init="zero", **SMALL).train()
    for p in model.parameters():  # make every block non-trivial
        torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, 64, (2, 8))
    labels = torch.randint(0, 64, (2, 8))
    n, k = 3, 2
    plan = DepthPlan(torch.full((2,), n), torch.full((2,), k), torch.zeros(2, dtype=torch.long))
    model(ids, labels, depth_plan=plan).loss.backward()
    truncated = {name: p.grad.clone() for name, p in model.named_parameters()}

    # the same loss with the first n steps' output made a constant by hand
    model.zero_grad()
    t = model.transformer
    calls = []

    def freeze_after_n(module, inputs, output):
        calls.append(1)
        return output.detach() if len(calls) == n * len(t.core_block) else output

    handle = t.core_block[-1].register_forward_hook(freeze_after_n)
    model(ids, labels, num_steps=n + k).loss.backward()
    handle.remove()
    for name, p in model.named_parameters():
        reference = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(
            truncated[name],
            reference,
            atol=1e-6,
            rtol=1e-5,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def _per_token(plan: DepthPlan, seq: int) -> DepthPlan:
    return DepthPlan(
        plan.no_grad_steps[:, None].expand(-1, seq).contiguous(),
        plan.grad_steps[:, None].expand(-1, seq).contiguous(),
        plan.noise_seeds,
    )


def test_uniform_per_token_depth_equals_per_row_depth_with_gradients():
    torch.manual_seed(0)
    model = parcae.create_model("parcae-tiny", state_init="zero", **SMALL).train()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ids, labels = torch.randint(0, 64, (3, 8)), torch.randint(0, 64, (3, 8))
    rows = DepthPlan(torch.tensor([0, 2, 1]), torch.tensor([2, 1, 3]), torch.zeros(3).long())
    results = []
    for plan in (rows, _per_token(rows, 8)):
        model.zero_grad()
        out = model(ids, labels, depth_plan=plan)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (row_out, row_grads), (token_out, token_grads) = results
    torch.testing.assert_close(token_out.logits, row_out.logits, atol=1e-5, rtol=1e-5)
    for name, grad in row_grads.items():
        torch.testing.assert_close(token_grads[name], grad, atol=1e-5, rtol=1e-4)
    assert token_out.loop.executed_steps == 8 * row_out.loop.executed_steps


def test_per_token_depth_computes_only_active_tokens():
    model = parcae.create_model("parcae-tiny", depth_granularity="per-token", **SMALL).train()
    seen = []
    model.transformer.core_block[0].mlp.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].shape[:-1].numel())
    )
    plan = model.sample_depth_plan(4, 8, torch.Generator().manual_seed(0))
    assert plan.no_grad_steps.shape == (4, 8) and plan.total_steps.unique().numel() > 2
    out = model(torch.randint(0, 64, (4, 8)), torch.randint(0, 64, (4, 8)), depth_plan=plan)
    out.loss.backward()
    assert sum(seen) == out.loop.executed_steps == out.loop.sampled_steps
    assert out.loop.sampled_steps == int(plan.total_steps.sum())
    assert sum(seen) < 4 * 8 * int(plan.total_steps.max())


def test_per_token_finished_tokens_keep_their_state():
    torch.manual_seed(0)
    model = parcae.create_model("parcae-tiny", state_init="zero", **SMALL).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, 64, (1, 6))
    steps = torch.tensor([[3, 3, 3, 1, 3, 3]])
    plan = DepthPlan(torch.zeros_like(steps), steps, torch.zeros(1).long())
    with torch.no_grad():
        mixed = model(ids, depth_plan=plan).logits
        three = model(ids, num_steps=3).logits
    # causal attention: tokens before the early finisher are unaffected by it; it and the tokens
    # after it (which read its last keys and values) are not
    torch.testing.assert_close(mixed[:, :3], three[:, :3], atol=1e-5, rtol=0)
    assert all(not torch.allclose(mixed[:, i], three[:, i], atol=1e-3) for i in (3, 4, 5))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4), min_size=4, max_size=4),
    st.lists(st.floats(-1e4, 1e4), min_size=4, max_size=4),
)
def test_spectral_radius_below_one_for_any_parameters(log_a, dt_bias):
    injection = DiagonalInjection(4, 4)
    with torch.no_grad():
        injection.A_log.copy_(torch.tensor(log_a))
        injection.dt_bias.copy_(torch.tensor(dt_bias))
    with torch.no_grad():
        transition = injection.transition()
    assert bool(torch.isfinite(transition).all())
    assert float(transition.max()) < 1.0 and float(transition.min()) >= 0.0


def test_initial_injection_matches_the_spec():
    model = parcae.create_model("parcae-tiny", **SMALL)
    adapter = model.transformer.adapter
    assert model.spectral_radius() == pytest.approx(math.sqrt(1 / 5), abs=1e-6)
    e = torch.randn(1, 2, 32)
    h = torch.randn(1, 2, 32)
    expected = math.sqrt(1 / 5) * h + 0.5 * math.log(5) * e
    torch.testing.assert_close(adapter.step(h, adapter.prepare(e)), expected)


def test_linear_injection_spectral_radius_is_the_largest_eigenvalue_of_w_h():
    model = parcae.create_model("rdm-tiny", **SMALL)
    with torch.no_grad():
        w_h = model.transformer.adapter.adapter.weight[:, :32]
        w_h.copy_(torch.diag(torch.tensor([1.5, -2.0] + [0.1] * 30)))
    assert model.transition().shape == (32, 32)
    assert model.spectral_radius() == pytest.approx(2.0, abs=1e-5)
    assert loop_diagnostics(model) == {"spectral_radius": pytest.approx(2.0, abs=1e-5)}


def test_zoh_discretization_approaches_euler_for_small_steps():
    injection = DiagonalInjection(8, 8, discretization="zoh")
    injection.reset_parameters()
    with torch.no_grad():
        injection.dt_bias.fill_(-12.0)  # Δ ≈ 6e-6
    euler = DiagonalInjection(8, 8)
    euler.load_state_dict(injection.state_dict())
    e = torch.randn(3, 8)
    torch.testing.assert_close(injection.prepare(e), euler.prepare(e), rtol=1e-4, atol=1e-9)
