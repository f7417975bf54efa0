"""The loop's state through depth: it grows by ρ through an unstable loop, settles in a stable
one."""

from __future__ import annotations

import pytest
import torch

import parcae
from parcae.eval.dynamics import state_norms

SMALL = dict(
    d_model=64, ffn_dim=128, n_heads=2, n_prelude=1, n_core=1, n_coda=1, context_length=16,
    vocab_size=64,
)  # fmt: skip


def test_state_norms_grow_by_rho_through_an_unstable_loop_and_settle_in_a_stable_one():
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 16))
    rdm = parcae.create_model("rdm-tiny", **SMALL).eval()
    with torch.no_grad():  # W_h = 3 I: the state triples every step
        rdm.transformer.adapter.adapter.weight[:, :64].copy_(3 * torch.eye(64))
    norms = state_norms(rdm, ids, depth=8)
    assert len(norms) == 9 and norms[-1] / norms[-2] == pytest.approx(3.0, rel=0.05)
    stable = state_norms(parcae.create_model("parcae-tiny", **SMALL).eval(), ids, depth=8)
    assert stable[-1] / stable[-2] == pytest.approx(1.0, abs=0.1)
