"""The training cross-entropy: F.cross_entropy's value and gradient, with one tensor less."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from parcae.model.loss import cross_entropy


def _batch(tokens: int, vocab: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(tokens)
    logits = torch.randn(tokens, vocab, generator=generator, dtype=dtype) * 4
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[::5] = -100
    return logits, labels


def _value_and_grad(loss_fn, logits, labels):
    logits = logits.clone().requires_grad_()
    loss = loss_fn(logits, labels)
    loss.backward()
    return loss.detach(), logits.grad


def test_value_and_gradient_match_torch_cross_entropy():
    logits, labels = _batch(257, 1000)
    ours = _value_and_grad(cross_entropy, logits, labels)
    torch_ = _value_and_grad(lambda z, y: F.cross_entropy(z, y, ignore_index=-100), logits, labels)
    assert ours[0] == pytest.approx(float(torch_[0]), rel=1e-6)
    torch.testing.assert_close(ours[1], torch_[1], rtol=1e-5, atol=1e-8)
    assert not ours[1][::5].any()  # ignored tokens take no gradient


def test_gradient_is_exact_in_float64():
    logits, labels = _batch(6, 11, torch.float64)
    check = torch.autograd.gradcheck(lambda z: cross_entropy(z, labels), (logits.requires_grad_(),))
    assert check


def test_every_label_ignored_gives_nan_like_torch():
    logits, _ = _batch(4, 7)
    labels = torch.full((4,), -100)
    assert cross_entropy(logits, labels).isnan()
    assert F.cross_entropy(logits, labels).isnan()


def test_backward_keeps_the_logits_and_no_log_probabilities():
    """Saved for backward: the logits themselves (no copy) and per-token vectors only."""
    logits, labels = _batch(64, 500)
    logits.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        cross_entropy(logits, labels)
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert len(big) == 1 and big[0].data_ptr() == logits.data_ptr()
