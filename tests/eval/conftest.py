"""Shared fixtures of the evaluation tests: a small tokenizer, tiny random models that use it,
and a saved model directory (model + tokenizer.json) as `--model` takes it."""

import pytest

from parcae.data.tokenizer import Tokenizer
from tests.conftest import SHAKESPEARE_DIR
from tests.infer.conftest import tiny_model


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    texts = [path.read_text() for path in sorted(SHAKESPEARE_DIR.glob("*.txt"))[:2]]
    return Tokenizer.train(texts, vocab_size=320)


def make_model(preset: str, tokenizer: Tokenizer, **overrides):
    """A tiny random model of `preset` for `tokenizer` (tests/infer's), 128 tokens of context."""
    return tiny_model(preset, vocab_size=tokenizer.vocab_size, context_length=128, **overrides)


@pytest.fixture(scope="session")
def parcae_model(tokenizer):
    return make_model("parcae-tiny", tokenizer)


@pytest.fixture(scope="session")
def gpt_model(tokenizer):
    return make_model("gpt-tiny", tokenizer)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, parcae_model, tokenizer):
    """A saved model directory with its tokenizer, as `parcae eval --model` takes it."""
    directory = tmp_path_factory.mktemp("model")
    parcae_model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory
