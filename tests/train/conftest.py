"""Fixtures: a few Shakespeare plays prepared with a small tokenizer, and a tiny run config."""

from __future__ import annotations

from pathlib import Path

import pytest

from parcae.data.prepare import prepare_dataset
from parcae.data.tokenizer import Tokenizer
from parcae.train.config import TrainConfig

TINY_MODEL = dict(
    d_model=64, ffn_dim=128, n_heads=2, n_prelude=1, n_core=1, n_coda=1, context_length=64
)


@pytest.fixture(scope="session")
def data_dir(plays_dir, tmp_path_factory) -> Path:
    """Six plays and poems tokenised with a 400-token tokenizer (two fall in val)."""
    directory = tmp_path_factory.mktemp("prepared")
    Tokenizer.train([p.read_text() for p in sorted(plays_dir.iterdir())], 400).save(directory)
    prepare_dataset(str(plays_dir), directory, directory, val_fraction=0.05, progress=False)
    return directory


# the settings of a run that takes about a second (every field but the model, data and budget)
TINY_RUN = dict(
    model_overrides=dict(TINY_MODEL),
    batch_size=4,
    seq_len=32,
    lr=0.02,
    adam_lr=0.01,
    warmup_steps=2,
    eval_every=3,
    eval_batches=2,
    eval_batch_size=8,
    final_eval_batches=2,
    checkpoint_every=2,
    muon_momentum_warmup_steps=4,
    tensorboard=False,
    device="cpu",
    precision="fp32",
)


def tiny_config(data_dir: Path, out_dir: Path, **overrides) -> TrainConfig:
    """A run of a 64-wide Parcae on 32-token rows that takes about a second."""
    fields = dict(
        model="parcae-tiny",
        data=str(data_dir),
        out_dir=str(out_dir),
        max_steps=6,
        progress=False,
        sample_tokens=0,
        **{**TINY_RUN, "model_overrides": dict(TINY_MODEL)},  # a dict of its own per run
    )
    fields.update(overrides)
    return TrainConfig(**fields)
