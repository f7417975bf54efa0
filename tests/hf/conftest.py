"""The official fixture and a tiny tokenizer, for the transformers tests."""

import pytest

import parcae
from tests.conftest import OFFICIAL_FIXTURE

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune. "
) * 20


@pytest.fixture(scope="session")
def official_model():
    return parcae.from_pretrained(OFFICIAL_FIXTURE)


@pytest.fixture(scope="session")
def tokenizer():
    from parcae.data.tokenizer import Tokenizer

    return Tokenizer.train([TEXT], vocab_size=300)
