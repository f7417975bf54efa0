"""The official fixture and a tiny tokenizer, for the transformers tests."""

from pathlib import Path

import pytest

import parcae

OFFICIAL_FIXTURE = Path("/work/shared/fixtures/official/parcae-a")
TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune. ") * 20


@pytest.fixture(scope="session")
def official_model():
    if not OFFICIAL_FIXTURE.is_dir():
        pytest.skip("official fixture not available")
    return parcae.from_pretrained(OFFICIAL_FIXTURE)


@pytest.fixture(scope="session")
def tokenizer():
    from parcae.data.tokenizer import Tokenizer

    return Tokenizer.train([TEXT], vocab_size=300)
