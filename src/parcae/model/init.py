"""Weight initialisation ("scaled-zero", optionally orthogonal; ARCHITECTURE §1.6).

std = sqrt(2 / (5 d)) for q, k, v, fc, C, the token embedding and an untied head; the output
projections `attn.c_proj` and `mlp.proj` start at exactly zero so every block starts as the
identity. As in the official code, the value-embedding tables are N(0, 1) (`nn.Embedding`'s
default) and their gates `nn.Linear`'s default, U(-1/sqrt(32), 1/sqrt(32)) (ARCHITECTURE §1.3).
With `orthogonal=True` a weight is a random orthogonal matrix scaled by std * sqrt(max(rows,
cols)), which keeps the row norms of the Gaussian it replaces (a square d×d
weight gets singular values std * sqrt(d)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from parcae.model.layers import Block


def scaled_zero_std(d_model: int) -> float:
    return math.sqrt(2.0 / (5.0 * d_model))


@torch.no_grad()
def orthogonal_(weight: Tensor, gain: float) -> Tensor:
    """Fill a 2-D weight with `gain` times a random matrix with orthonormal rows or columns.

    A Gaussian A (m >= n, truncated to ±2 as in the official code) is orthonormalised by
    Householder QR when it is nearly square, and by Cholesky QR, Q = A L^-T with L Lᵀ = AᵀA,
    when m >= 4n: such a Gaussian has condition number below 3, so Cholesky QR is orthogonal to
    float32 precision while costing two matrix products instead of a Householder sweep over all
    m rows (a 32768×768 table in ~1 s instead of ~5 s).
    """
    rows, cols = weight.shape
    tall, short = max(rows, cols), min(rows, cols)
    # standard normal truncated to ±2, as the official code draws it: a tall Q keeps the
    # lighter tails of its source (the token table's kurtosis is ~2.4, not 3)
    a = nn.init.trunc_normal_(torch.empty(tall, short, device=weight.device), a=-2.0, b=2.0)
    if tall >= 4 * short:
        chol = torch.linalg.cholesky(a.T @ a)
        q = torch.linalg.solve_triangular(chol.T, a, upper=True, left=False)
    else:
        q = torch.linalg.qr(a).Q
    weight.copy_((q if rows >= cols else q.T) * gain)
    return weight


@torch.no_grad()
def init_matrix_(weight: Tensor, std: float, orthogonal: bool) -> None:
    if orthogonal:
        orthogonal_(weight, std * math.sqrt(max(weight.shape)))
    else:
        nn.init.normal_(weight, std=std)


@torch.no_grad()
def init_block_(block: Block, std: float, orthogonal: bool) -> None:
    """q, k, v, fc ~ std; c_proj, mlp.proj = 0; norms = 1; the value-embedding gate as
    `nn.Linear` initialises it, U(-1/sqrt(in), 1/sqrt(in))."""
    attn = block.attn
    for linear in (attn.c_q, attn.c_k, attn.c_v, block.mlp.fc):
        init_matrix_(linear.weight, std, orthogonal)
    nn.init.zeros_(attn.c_proj.weight)
    nn.init.zeros_(block.mlp.proj.weight)
    nn.init.ones_(block.norm_1.weight)
    nn.init.ones_(block.norm_2.weight)
    if attn.ve_gate is not None:
        attn.ve_gate.reset_parameters()
