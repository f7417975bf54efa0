"""Shared fixtures: a tiny random Parcae / GPT and the official parity fixture (read in place)."""

import pytest
import torch

import parcae
from tests.conftest import OFFICIAL_FIXTURE

TINY = dict(vocab_size=300, d_model=64, n_heads=2, ffn_dim=128, context_length=64)


def tiny_model(preset: str = "parcae-tiny", **overrides):
    torch.manual_seed(0)
    model = parcae.create_model(preset, **{**TINY, **overrides})
    with torch.no_grad():  # identity-init blocks would make every token's keys alike
        for name, parameter in model.named_parameters():
            if name.endswith(("c_proj.weight", "mlp.proj.weight")):
                parameter.normal_(std=0.05)
    return model.eval()


@pytest.fixture(scope="session")
def parcae_model():
    return tiny_model("parcae-tiny")


@pytest.fixture(scope="session")
def varied_model():
    """A tiny Parcae whose tokens converge at different loop steps: decay rates spread over
    e^±4 and a core with larger weights, std 0.2 (at eps = 0.2 and T = 8, exits at 4 to 8
    steps). Under the official init (truncated orthogonal source, N(0, 1) value embeddings) a
    std-0.1 core moved every token's state too little: all settled after 4-5 steps, too
    uniform for the tests that need a mix of early and late exits; with std 0.2 the core's
    update dominates long enough that tokens settle at clearly different steps (at least 3
    distinct exit depths for each generator seed 0-4)."""
    model = tiny_model("parcae-tiny")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.transformer.adapter.A_log.copy_(2 * torch.randn(64, generator=generator))
        for parameter in model.transformer.core_block.parameters():
            if parameter.dim() == 2:
                parameter.normal_(std=0.2, generator=generator)
    return model


@pytest.fixture(scope="session")
def gpt_model():
    return tiny_model("gpt-tiny")


@pytest.fixture(scope="session")
def official():
    from safetensors.torch import load_file

    return parcae.from_pretrained(OFFICIAL_FIXTURE), load_file(
        OFFICIAL_FIXTURE / "expected.safetensors"
    )


TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
    "and by opposing end them. "
) * 20


@pytest.fixture(scope="session")
def tokenizer():
    from parcae.data.tokenizer import Tokenizer

    return Tokenizer.train([TEXT], vocab_size=300)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, parcae_model, tokenizer):
    """A saved tiny model with its tokenizer beside it."""
    path = tmp_path_factory.mktemp("model")
    parcae_model.save_pretrained(path)
    tokenizer.save(path)
    return path
