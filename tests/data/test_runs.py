"""`parcae.data.runs`: the prepared directory a training run's config names, read back from the
config.yaml the run wrote, and the run's sequence length."""

from __future__ import annotations

import pytest

from parcae.data.recipes import CACHE_ENV
from parcae.data.runs import (
    RUN_CONFIG,
    default_data_dir,
    prepared_dir,
    run_data_dir,
    run_seq_len,
)
from parcae.data.shards import MANIFEST
from parcae.errors import ConfigError
from parcae.train.config import TrainConfig


def test_a_saved_training_config_leads_back_to_the_data_it_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    corpus = tmp_path / "plays.txt"
    corpus.write_text("To be, or not to be.\n")
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(data=str(corpus), vocab_size=300, seq_len=48).save(run / RUN_CONFIG)
    assert run_data_dir(run) is None  # not prepared yet
    directory = default_data_dir(str(corpus), 300)
    assert directory.parent == tmp_path / "cache" / "prepared"
    assert directory.name.startswith("plays-txt-") and directory.name.endswith("-v300")
    directory.mkdir(parents=True)
    (directory / MANIFEST).write_text("{}")
    assert run_data_dir(run) == directory
    assert run_seq_len(run) == 48


def test_a_run_names_its_data_dir_or_a_prepared_directory_as_is(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / MANIFEST).write_text("{}")
    assert prepared_dir(str(prepared), "elsewhere", 300) == prepared
    assert prepared_dir("corpus.txt", str(tmp_path / "mine"), 300) == tmp_path / "mine"
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_CONFIG).write_text(f"data: corpus.txt\ndata_dir: {prepared}\nvocab_size: 300\n")
    assert run_data_dir(run) == prepared
    assert run_seq_len(run) is None  # a config without a usable seq_len


def test_outside_a_run_there_is_no_data_and_no_seq_len(tmp_path):
    assert run_data_dir(tmp_path) is None
    assert run_seq_len(tmp_path) is None


@pytest.mark.parametrize(
    "text, message",
    [("data: [unclosed\n", "not valid YAML"), ("- a list\n", "expected a mapping")],
)
def test_a_broken_run_config_is_one_clear_error(tmp_path, text, message):
    (tmp_path / RUN_CONFIG).write_text(text)
    with pytest.raises(ConfigError, match=message):
        run_data_dir(tmp_path)
