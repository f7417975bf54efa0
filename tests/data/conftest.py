"""Shared fixtures: a few Shakespeare plays (read from ../shared/data), a small tokenizer, shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from parcae.data.prepare import prepare_dataset
from parcae.data.tokenizer import Tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "shakespeare"
PLAYS = ("macbeth_gut.txt", "sonnets_gut.txt", "tempest_gut.txt", "phoenix_and_the_turtle_gut.txt",
         "passionate_pilgrim_gut.txt", "lovers_complaint_gut.txt")
VOCAB_SIZE = 400


@pytest.fixture(scope="session")
def plays_dir(tmp_path_factory) -> Path:
    """A directory of symlinks to six plays and poems (about 330 kB; two of them fall in val)."""
    if not SHAKESPEARE.is_dir():
        pytest.skip(f"{SHAKESPEARE} not found")
    directory = tmp_path_factory.mktemp("plays")
    for name in PLAYS:
        (directory / name).symlink_to(SHAKESPEARE / name)
    return directory


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
    prepare_dataset(str(plays_dir), tokenizer_dir, directory, val_fraction=0.05, shard_tokens=20_000, progress=False)
    return directory
