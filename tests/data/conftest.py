"""Fixtures: a small tokenizer and shards of the plays in `plays_dir` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parcae.data.prepare import prepare_dataset
from parcae.data.tokenizer import Tokenizer

VOCAB_SIZE = 400


@pytest.fixture(scope="session")
def tokenizer_dir(plays_dir, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    texts = [path.read_text() for path in sorted(plays_dir.iterdir())]
    Tokenizer.train(texts, VOCAB_SIZE).save(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def data_dir(plays_dir, tokenizer_dir, tmp_path_factory) -> Path:
    """The plays prepared into shards of about 20k tokens (several per split)."""
    directory = tmp_path_factory.mktemp("prepared")
    prepare_dataset(
        str(plays_dir),
        tokenizer_dir,
        directory,
        val_fraction=0.05,
        shard_tokens=20_000,
        progress=False,
    )
    return directory
