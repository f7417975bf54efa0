"""Forward shapes, losses and weight tying of Parcae and the GPT baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import parcae

SMALL = dict(vocab_size=100, d_model=64, ffn_dim=128, n_heads=2, context_length=32)


@pytest.mark.parametrize("preset", ["parcae-tiny", "gpt-tiny", "rdm-tiny"])
def test_logits_are_float32_over_the_padded_vocabulary(preset):
    model = parcae.create_model(preset, **SMALL)
    assert model.config.padded_vocab_size == 128
    out = model(torch.randint(0, 100, (3, 20)))
    assert out.logits.shape == (3, 20, 128) and out.logits.dtype == torch.float32
    assert out.loss is None


def test_loss_is_mean_cross_entropy_ignoring_minus_100():
    model = parcae.create_model("parcae-tiny", **SMALL).eval()
    ids = torch.randint(0, 100, (2, 10))
    labels = torch.randint(0, 100, (2, 10))
    labels[0, :4] = -100
    out = model(ids, labels=labels)
    keep = labels != -100
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)


def test_gpt_depth_is_fixed():
    model = parcae.create_model("gpt-tiny", **SMALL).eval()
    ids = torch.randint(0, 100, (2, 10))
    out = model(ids, num_steps=7)
    assert out.loop is None and model.spectral_radius() is None
    assert torch.equal(out.logits, model(ids).logits)


def test_tied_head_shares_the_token_table():
    model = parcae.create_model("parcae-tiny", **SMALL)
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = parcae.create_model("parcae-tiny", tie_embeddings=False, **SMALL)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == model.num_params() + 128 * 64


def test_blocks_start_as_the_identity():
    model = parcae.create_model("gpt-tiny", **SMALL)
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.proj.weight.any()


def test_orthogonal_init_gives_orthonormal_columns_and_rows():
    model = parcae.create_model("parcae-tiny", init_orthogonal=True, **SMALL)
    for weight in (
        model.transformer.wte.weight,
        model.transformer.prelude[0].mlp.fc.weight,
        model.transformer.prelude[0].attn.c_q.weight,
    ):
        w = weight.detach()
        gram = w.T @ w
        torch.testing.assert_close(gram / gram.diagonal().mean(), torch.eye(64), atol=1e-5, rtol=0)


def test_training_forward_is_reproducible_from_a_depth_plan():
    model = parcae.create_model("parcae-tiny", state_init="like-init", **SMALL).train()
    ids = torch.randint(0, 100, (4, 12))
    plan = model.sample_depth_plan(4, 12, torch.Generator().manual_seed(5))
    first, second = model(ids, depth_plan=plan), model(ids, depth_plan=plan)
    assert torch.equal(first.logits, second.logits)
    # a row's output depends only on its own plan entry (so ranks can slice a global plan)
    half = model(ids[2:], depth_plan=plan.rows(2, 4))
    torch.testing.assert_close(half.logits, first.logits[2:], atol=1e-5, rtol=0)


def test_sequence_longer_than_the_context_is_refused():
    model = parcae.create_model("parcae-tiny", **SMALL)
    with pytest.raises(parcae.ConfigError, match="context_length"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_half_relu_squared_matches_autograd_of_its_formula():
    from parcae.model.layers import HalfReluSquared

    x = torch.randn(4, 7, 33, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(HalfReluSquared.apply, (x,))
    grad = torch.randn_like(x)
    fused = torch.autograd.grad(HalfReluSquared.apply(x), x, grad)[0]
    plain = torch.autograd.grad(F.relu(x).square() * 0.5, x, grad)[0]
    assert torch.equal(HalfReluSquared.apply(x), F.relu(x).square() * 0.5)
    assert torch.equal(fused, plain)


def test_a_preset_builds_on_the_meta_device_without_memory():
    with torch.device("meta"):
        model = parcae.create_model("parcae-1.3b")
    assert all(p.is_meta for p in model.parameters())
    assert model.num_params() == 1_338_591_744


@pytest.mark.parametrize("preset", ["parcae-tiny", "gpt-tiny", "rdm-tiny"])
def test_meta_model_materialises_with_to_empty_and_reset_parameters(preset):
    with torch.device("meta"):
        model = parcae.create_model(preset, **SMALL)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.reset_parameters()
    torch.manual_seed(0)
    reference = parcae.create_model(preset, device="cpu", **SMALL)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied again
    expected = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert torch.equal(model.rope_cos, reference.rope_cos)
    ids = torch.randint(0, 100, (2, 8))
    torch.testing.assert_close(model.eval()(ids).logits, reference.eval()(ids).logits)
