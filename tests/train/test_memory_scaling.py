"""Training memory (`parcae.train.memory`): the activations saved for backward under truncated
backprop through depth are flat in μ_rec, linear in the gradient steps and fewer when
checkpointed; the estimate's other terms match what a real step allocates."""

from __future__ import annotations

import pytest
import torch

from parcae.model import create_model, preset_config
from parcae.train.config import TrainConfig
from parcae.train.memory import (
    loss_transient_bytes,
    measure_step,
    saved_activation_bytes,
    state_bytes,
    truncated_plan,
)
from parcae.train.model import checkpoint_blocks
from parcae.train.optimizer import build_optimizer

TINY = dict(
    vocab_size=256,
    d_model=64,
    ffn_dim=128,
    n_heads=2,
    context_length=32,
    n_prelude=1,
    n_core=1,
    n_coda=1,
)
BATCH, SEQ = 2, 32


def _model(checkpointed: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(preset_config("parcae-tiny", **TINY), "cpu").train()
    if checkpointed:
        checkpoint_blocks(model)
    return model


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(
        0, TINY["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(0)
    )


def _saved(model, tokens, no_grad_steps: int, grad_steps: int) -> int:
    plan = truncated_plan(BATCH, no_grad_steps, grad_steps)
    return saved_activation_bytes(model, tokens, tokens, plan)


def test_saved_activations_do_not_grow_with_mean_recurrence(tokens):
    model = _model()
    assert _saved(model, tokens, 0, 2) == _saved(model, tokens, 14, 2)  # μ_rec 2 and 16


def test_saved_activations_grow_by_a_constant_per_gradient_step(tokens):
    model = _model()
    saved = [_saved(model, tokens, 0, k) for k in (1, 2, 3, 4)]
    steps = [b - a for a, b in zip(saved, saved[1:])]
    assert saved[3] > saved[0]
    assert max(steps) - min(steps) <= 0.01 * min(steps)


def test_checkpointing_saves_fewer_activations(tokens):
    plain = _saved(_model(), tokens, 2, 2)
    checkpointed = _saved(_model(checkpointed=True), tokens, 2, 2)
    assert 0 < checkpointed < plain


@pytest.mark.parametrize("checkpointed", [False, True])
def test_step_peak_lies_between_the_start_of_backward_and_the_estimate(tokens, checkpointed):
    model = _model(checkpointed)
    memory = measure_step(model, tokens, tokens, truncated_plan(BATCH, 2, 2))
    start_of_backward = memory.saved + loss_transient_bytes(
        BATCH * SEQ, model.config.padded_vocab_size
    )
    estimate = start_of_backward + state_bytes(model).gradients
    assert 0.99 * start_of_backward <= memory.peak <= estimate


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_optimizer_state_bytes_match_a_real_step(tokens, optimizer):
    model = _model()
    muon_adamw = build_optimizer(model, TrainConfig(optimizer=optimizer), torch.float32)
    model(tokens, tokens, depth_plan=truncated_plan(BATCH, 0, 1)).loss.backward()
    muon_adamw.step()
    held = sum(
        t.numel() * t.element_size() for state in muon_adamw.state.values() for t in state.values()
    )
    assert state_bytes(model, optimizer).optimizer == held
