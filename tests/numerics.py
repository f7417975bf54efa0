"""Tolerances that come from the float rounding of the computation under test, not from one
machine's result.

Two float32 evaluations of the same function (a fast path and the general one, or eager and
compiled) differ because their kernels sum in different orders; how much depends on the CPU's
kernels (`ATEN_CPU_CAPABILITY`). A fixed `atol` set from one machine's difference fails on
another. Instead, the same function evaluated in float64 gives the exact value to within float32
precision, and the check is: the path under test is as accurate as the general float32 path,

    max|actual - exact| <= slack · max|baseline - exact| + ulp32(max|exact|),

which holds on any CPU for a correct fast path and fails for one that computes something else
(a wrong cache column or a missed step is off by far more than the rounding of either path).
"""

import copy

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps


def float64_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with float64 parameters and buffers: the exact reference."""
    return copy.deepcopy(model).double()


def assert_as_accurate(
    actual: torch.Tensor, baseline: torch.Tensor, exact: torch.Tensor, slack: float = 2.0
) -> None:
    """Assert that float32 `actual` is within `slack` times the float32 `baseline`'s own rounding
    error of the float64 `exact` value, plus one float32 ulp at the scale of `exact`."""
    exact = exact.double()
    baseline_error = (baseline.double() - exact).abs().max().item()
    actual_error = (actual.double() - exact).abs().max().item()
    ulp = FLOAT32_EPS * exact.abs().max().item()
    bound = slack * baseline_error + ulp
    assert actual_error <= bound, (
        f"error {actual_error:.3g} against float64 exceeds {slack} x the general path's "
        f"{baseline_error:.3g} + one ulp {ulp:.3g}"
    )
