"""Parity with the official implementation: its fixture, then its whole accepted config space."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import parcae
from tests.conftest import OFFICIAL_FIXTURE
from tests.model.reference import freqs_cis, reference_logits

DEPTHS = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def expected():
    return load_file(OFFICIAL_FIXTURE / "expected.safetensors")


@pytest.fixture(scope="module")
def official_model():
    return parcae.from_pretrained(OFFICIAL_FIXTURE)


@pytest.mark.parametrize("depth", DEPTHS)
def test_fixture_logits_and_loss_match_official(official_model, expected, depth):
    with torch.no_grad():
        out = official_model(expected["input_ids"], labels=expected["labels"], num_steps=depth)
    torch.testing.assert_close(out.logits, expected[f"logits_T{depth}"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.loss.reshape(1), expected[f"loss_T{depth}"], atol=1e-5, rtol=0)


def test_fixture_greedy_decoding_by_full_forwards(official_model, expected):
    ids = expected["greedy_prompt"]
    target = expected["greedy_tokens"]
    with torch.no_grad():
        while ids.shape[1] < target.shape[1]:
            logits = official_model(ids, num_steps=4).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ids, target)


def test_reference_implementation_reproduces_fixture(expected):
    """Anchors the independent reference used below to the official outputs."""
    config = json.loads((OFFICIAL_FIXTURE / "config.json").read_text())
    state = torch.load(
        OFFICIAL_FIXTURE / "pytorch_model.bin", map_location="cpu", weights_only=True
    )
    for depth in DEPTHS:
        logits = reference_logits(config, state, expected["input_ids"], depth)
        torch.testing.assert_close(logits, expected[f"logits_T{depth}"], atol=1e-4, rtol=0)


def _official_checkpoint(tmp_path: Path, **fields) -> tuple[dict, dict]:
    """Write a randomly weighted official-format checkpoint (keys, prefixes and freqs_cis as the
    official code saves them) for a config built from `fields`."""
    config = parcae.ParcaeConfig(
        vocab_size=96, padding_multiple=32, context_length=32, state_init="zero", **fields
    )
    official = config.to_official()
    model = parcae.create_model(config)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        state[key] = torch.randn(value.shape, generator=generator) * 0.3
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    hd = config.head_dim
    rotations = freqs_cis(hd, config.context_length, config.rope_theta)
    saved = {f"_orig_mod.{k}": v for k, v in state.items()}
    saved["freqs_cis"] = torch.view_as_real(rotations)[None, :, None]
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save(saved, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(official))
    return official, state


CONFIG_SPACE = [
    dict(d_model=64, ffn_dim=128, n_heads=2),
    dict(d_model=96, ffn_dim=160, n_heads=3, n_prelude=1, n_core=3, n_coda=1),
    dict(d_model=64, ffn_dim=128, n_heads=4, n_kv_heads=2),
    dict(d_model=64, ffn_dim=128, n_heads=2, injection="linear", prelude_norm=False),
    dict(d_model=64, ffn_dim=128, n_heads=2, injection="add"),
    dict(d_model=64, ffn_dim=128, n_heads=2, tie_embeddings=False),
    dict(d_model=64, ffn_dim=128, n_heads=2, qk_norm=False),
    dict(d_model=64, ffn_dim=128, n_heads=2, n_prelude=0, n_core=1, n_coda=0),
    dict(
        d_model=64,
        ffn_dim=96,
        n_heads=1,
        n_prelude=3,
        n_core=2,
        n_coda=2,
        rope_theta=10000.0,
        logit_softcap=15.0,
        norm_eps=1e-6,
    ),
]


@pytest.mark.parametrize(
    "fields", CONFIG_SPACE, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items())
)
def test_parity_across_official_config_space(tmp_path, fields):
    official, state = _official_checkpoint(tmp_path, **fields)
    model = parcae.from_pretrained(tmp_path)
    input_ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    for depth in (1, 3):
        with torch.no_grad():
            ours = model(input_ids, num_steps=depth).logits
        torch.testing.assert_close(
            ours, reference_logits(official, state, input_ids, depth), atol=1e-4, rtol=1e-4
        )
