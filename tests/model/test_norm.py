"""RMSNorm's two-pass backward: F.rms_norm's values and gradients, exact in float64."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parcae.model.layers import RMSNorm, rms_norm


def test_rms_norm_matches_torch_in_value_and_gradient():
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 48, generator=generator) * 3).requires_grad_()
    grad = torch.randn(64, 48, generator=generator)
    ours = rms_norm(x, 1e-5)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    reference = F.rms_norm(x, (48,), eps=1e-5)
    (reference_grad,) = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-5, atol=1e-6)


def test_rms_norm_gradient_is_exact_in_float64():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rms_norm(t, 1e-5), (x,))


def test_bfloat16_input_is_normalised_in_float32_and_cast_back():
    x = torch.randn(8, 32).to(torch.bfloat16).requires_grad_()
    y = rms_norm(x, 1e-5)
    assert y.dtype == torch.bfloat16
    expected = F.rms_norm(x.detach().float(), (32,), eps=1e-5).to(torch.bfloat16)
    assert torch.equal(y.detach(), expected)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_the_module_applies_its_weight_after_normalising():
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(3, 16, requires_grad=True)
    expected = F.rms_norm(x, (16,), norm.weight, eps=1e-5)
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # the no-gradient path (evaluation, export) uses F.rms_norm itself
        assert torch.equal(norm(x), F.rms_norm(x, (16,), eps=1e-5) * norm.weight)
