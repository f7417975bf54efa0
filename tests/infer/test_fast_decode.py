"""The single-token decode step (`parcae.model.decode`) against the general cached forward, and
the compiled step against the eager one."""

import pytest
import torch

from parcae.infer import GenerationStats, generate
from parcae.model.decode import DecodeStep, compiler_available
from tests.infer.conftest import tiny_model
from tests.numerics import assert_as_accurate, float64_twin

PROMPT = torch.randint(300, (2, 12), generator=torch.Generator().manual_seed(3))
STEPS = 6


@torch.no_grad()
def general_logits(model, sharing, num_steps=3):
    cache = model.new_cache(2, 24, num_steps, sharing)
    logits = model(PROMPT, cache=cache, last_only=True).logits[:, -1]
    tokens, out = [], []
    for _ in range(STEPS):
        token = logits[:, :300].argmax(-1)  # the vocabulary (logits are padded)
        tokens.append(token)
        logits = model(token[:, None], cache=cache, last_only=True).logits[:, -1]
        out.append(logits)
    return torch.stack(tokens, 1), torch.stack(out, 1)


@torch.no_grad()
def fast_logits(model, sharing, num_steps=3, compile=False):
    cache = model.new_cache(2, 24, num_steps, sharing)
    logits = model(PROMPT, cache=cache, last_only=True).logits[:, -1]
    step = DecodeStep(model, cache, compile=compile)
    tokens, out = [], []
    for _ in range(STEPS):
        token = logits[:, :300].argmax(-1)  # the vocabulary (logits are padded)
        tokens.append(token)
        logits = step(token)
        out.append(logits)
    return torch.stack(tokens, 1), torch.stack(out, 1)


@pytest.mark.parametrize("sharing", ["full", "ring:2"])
def test_fast_path_equals_general_parcae(parcae_model, sharing):
    tokens, logits = general_logits(parcae_model, sharing)
    fast_tokens, fast = fast_logits(parcae_model, sharing)
    exact_tokens, exact = general_logits(float64_twin(parcae_model), sharing)
    assert torch.equal(tokens, fast_tokens) and torch.equal(tokens, exact_tokens)
    assert_as_accurate(fast, logits, exact)


def test_fast_path_equals_general_gpt(gpt_model):
    tokens, logits = general_logits(gpt_model, None)
    fast_tokens, fast = fast_logits(gpt_model, None)
    exact_tokens, exact = general_logits(float64_twin(gpt_model), None)
    assert torch.equal(tokens, fast_tokens) and torch.equal(tokens, exact_tokens)
    assert_as_accurate(fast, logits, exact)


@pytest.mark.parametrize("sharing", ["full", "ring:2"])
def test_generate_fast_equals_adaptive_general(parcae_model, sharing):
    """generate without a threshold takes the fast path; with eps = 0 (never exits) the
    general forward and its exit-rule machinery: same tokens and loop steps."""
    stats_fast, stats_general = GenerationStats(), GenerationStats()
    fast = generate(
        parcae_model,
        PROMPT,
        8,
        num_steps=3,
        temperature=0,
        cache_sharing=sharing,
        stats=stats_fast,
    )
    general = generate(
        parcae_model,
        PROMPT,
        8,
        num_steps=3,
        temperature=0,
        cache_sharing=sharing,
        adaptive=0.0,
        stats=stats_general,
    )
    assert torch.equal(fast, general)
    assert stats_fast.mean_steps == stats_general.mean_steps == 3.0


def test_generate_fast_matches_uncached(parcae_model, gpt_model):
    for model in (parcae_model, gpt_model):
        cached = generate(model, PROMPT, 6, num_steps=3, temperature=0)
        uncached = generate(model, PROMPT, 6, num_steps=3, temperature=0, use_cache=False)
        assert torch.equal(cached, uncached)


@pytest.mark.skipif(
    not compiler_available(), reason="needs a C++ compiler (inductor's CPU backend)"
)
def test_compiled_equals_eager():
    model = tiny_model("parcae-tiny", n_prelude=1, n_core=1, n_coda=1)
    tokens, logits = fast_logits(model, "full", num_steps=2)
    compiled_tokens, compiled = fast_logits(model, "full", num_steps=2, compile=True)
    _, exact = general_logits(float64_twin(model), "full", num_steps=2)
    assert torch.equal(tokens, compiled_tokens)
    assert_as_accurate(compiled, logits, exact, slack=4.0)  # inductor fuses and reorders more
    eager = generate(model, PROMPT, 6, num_steps=2, temperature=0)
    assert torch.equal(generate(model, PROMPT, 6, num_steps=2, temperature=0, compile=True), eager)


def test_compile_without_a_compiler_warns_in_one_line_and_decodes_eagerly(
    parcae_model, monkeypatch, capsys
):
    """Issue 14: a missing compiler is one clear line, and decoding goes on (eager)."""
    from parcae.model import decode

    monkeypatch.setattr(decode, "compiler_available", lambda: False)
    monkeypatch.setattr(decode, "_WARNED", False)
    prompt = [[3, 1, 4, 1, 5]]
    parcae_model.__dict__.pop("_decode_steps", None)
    compiled = generate(parcae_model, prompt, 6, num_steps=2, temperature=0, compile=True)
    eager = generate(parcae_model, prompt, 6, num_steps=2, temperature=0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a C++ compiler" in err and "decoding eagerly" in err
    assert torch.equal(compiled, eager)
    step = next(s for key, s in parcae_model._decode_steps.items() if key[-1])
    assert not step.compiled
    generate(parcae_model, prompt, 2, num_steps=2, temperature=0, compile=True)
    assert capsys.readouterr().err == ""  # once per process
