"""A training run on a synthetic reasoning task (`data: synth:...`, `parcae.train.data`)."""

from __future__ import annotations

import math

from parcae.data.synth import parse_spec
from parcae.data.tokenizer import Tokenizer
from parcae.train.loop import train

from .conftest import tiny_config

SPEC = "synth:varchain?length=1-2"


def test_a_run_on_a_synthetic_task_trains_and_saves_its_character_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path / "cache"))
    config = tiny_config(
        tmp_path / "unused", tmp_path / "run", data=SPEC, seq_len=parse_spec(SPEC).max_tokens
    )
    result = train(config)
    assert result.steps == config.max_steps
    assert all(math.isfinite(r.loss) and r.tokens > 0 for r in result.final_eval)
    saved = Tokenizer.load(tmp_path / "run" / "model")
    assert saved.vocab_size == 44 and saved.decode(saved.encode("a=1;a?")) == "a=1;a?"
