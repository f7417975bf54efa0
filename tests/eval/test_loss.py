"""Validation loss and bits per byte at several loop depths (`parcae.eval.loss`)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from parcae import create_model
from parcae.eval.loss import default_depths, evaluate
from tests.train.conftest import data_dir  # noqa: F401 (a fixture)

TINY = dict(vocab_size=64, d_model=64, ffn_dim=128, n_heads=2, context_length=32)
SPECIAL = 0  # token id with 0 bytes, like BOS


@pytest.fixture(scope="module")
def parcae_model():
    torch.manual_seed(0)
    model = create_model("parcae-tiny", **TINY)
    with torch.no_grad():  # away from the identity init, so that depth changes the output
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def gpt_model():
    torch.manual_seed(0)
    return create_model("gpt-tiny", **TINY)


def _batches(count: int = 2, batch: int = 3, seq: int = 16, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        tokens = torch.randint(0, TINY["vocab_size"], (batch, seq + 1), generator=generator)
        tokens[:, ::5] = SPECIAL  # document boundaries: targets that carry no bytes
        rows.append(SimpleNamespace(inputs=tokens[:, :-1], targets=tokens[:, 1:]))
    return rows


def _token_bytes() -> torch.Tensor:
    lengths = torch.arange(TINY["vocab_size"]) % 4 + 1
    lengths[SPECIAL] = 0
    return lengths


def _reference(model, batches, token_bytes, depth):
    """Σ nats and Σ bytes over non-special targets, computed directly from the logits."""
    model.eval()
    nats = n_bytes = tokens = 0.0
    with torch.no_grad():
        for batch in batches:
            logits = model(batch.inputs, num_steps=depth).logits
            losses = F.cross_entropy(
                logits.flatten(0, 1), batch.targets.flatten(), reduction="none"
            )
            counted = token_bytes[batch.targets.flatten()] > 0
            nats += float(losses[counted].sum())
            n_bytes += float(token_bytes[batch.targets.flatten()].sum())
            tokens += int(counted.sum())
    model.train()
    return nats, n_bytes, tokens


def test_bpb_is_nats_over_ln2_times_bytes(parcae_model):
    batches, token_bytes = _batches(), _token_bytes()
    (result,) = evaluate(parcae_model, batches, token_bytes, [2])
    nats, n_bytes, tokens = _reference(parcae_model, batches, token_bytes, 2)
    assert result.depth == 2
    assert result.tokens == tokens and result.bytes == n_bytes
    assert result.loss == pytest.approx(nats / tokens, rel=1e-5)
    assert result.bpb == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)


def test_special_tokens_are_left_out_of_loss_and_bytes(parcae_model):
    batches = _batches()
    token_bytes = _token_bytes()
    specials = sum(int((b.targets == SPECIAL).sum()) for b in batches)
    all_targets = sum(b.targets.numel() for b in batches)
    (result,) = evaluate(parcae_model, batches, token_bytes, [1])
    assert specials > 0
    assert result.tokens == all_targets - specials
    # giving the special token bytes brings its targets into both sums
    (with_special,) = evaluate(parcae_model, batches, token_bytes.clamp(min=1), [1])
    assert with_special.tokens == all_targets
    assert with_special.bytes == result.bytes + specials


def test_each_depth_is_evaluated_at_exactly_that_depth(parcae_model):
    batches, token_bytes = _batches(), _token_bytes()
    results = evaluate(parcae_model, iter(batches), token_bytes, [1, 2, 4])  # read once
    assert [r.depth for r in results] == [1, 2, 4]
    for result in results:
        nats, _, tokens = _reference(parcae_model, batches, token_bytes, result.depth)
        assert result.loss == pytest.approx(nats / tokens, rel=1e-5)
    assert len({round(r.loss, 6) for r in results}) == 3


def test_loop_diagnostics_are_reported_for_a_looped_model(parcae_model):
    results = evaluate(parcae_model, _batches(), _token_bytes(), [1, 4])
    for result in results:
        assert result.state_norm is not None and result.state_norm > 0
        assert result.residual is not None and math.isfinite(result.residual)


def test_evaluation_is_deterministic_and_restores_training_mode(parcae_model):
    parcae_model.train()
    first = evaluate(parcae_model, _batches(), _token_bytes(), [4])
    assert parcae_model.training
    second = evaluate(parcae_model, _batches(), _token_bytes(), [4])
    assert first[0].loss == second[0].loss and first[0].bpb == second[0].bpb


def test_default_depths_are_1_2_4_and_mean_recurrence(parcae_model, gpt_model):
    assert default_depths(parcae_model) == [1, 2, 4]  # μ_rec = 4 in parcae-tiny
    deeper = create_model("parcae-tiny", device="meta", mean_recurrence=8, **TINY)
    assert default_depths(deeper) == [1, 2, 4, 8]
    assert default_depths(gpt_model) == [None]


def test_gpt_is_evaluated_at_its_own_depth_without_loop_diagnostics(gpt_model):
    batches, token_bytes = _batches(), _token_bytes()
    (result,) = evaluate(gpt_model, batches, token_bytes, default_depths(gpt_model))
    nats, n_bytes, tokens = _reference(gpt_model, batches, token_bytes, None)
    assert result.depth is None
    assert result.state_norm is None and result.residual is None
    assert result.bpb == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)


def test_bf16_autocast_evaluation_is_close_to_fp32(parcae_model):
    batches, token_bytes = _batches(), _token_bytes()
    (fp32,) = evaluate(parcae_model, batches, token_bytes, [2])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    (bf16,) = evaluate(parcae_model, batches, token_bytes, [2], autocast=autocast)
    assert bf16.loss == pytest.approx(fp32.loss, rel=2e-2)


def test_unigram_loss_is_the_entropy_of_the_training_split(data_dir):  # noqa: F811
    from collections import Counter

    from parcae.data.shards import load_manifest, open_split
    from parcae.eval.loss import unigram_loss

    counts = Counter()
    for shard in open_split(data_dir, "train", load_manifest(data_dir)):
        counts.update(shard.tolist())
    total = sum(counts.values())
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    assert unigram_loss(data_dir) == pytest.approx(entropy, rel=1e-9)
    assert 0 < entropy < math.log(len(counts))  # Shakespeare's tokens are far from uniform
