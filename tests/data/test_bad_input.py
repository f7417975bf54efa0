"""Bad input to `parcae tokenizer train`, `parcae data prepare` and `parcae data info`: each case
exits 2 with one line on stderr, no traceback, and its inputs untouched (`tests/bad_input.py`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.bad_input import refuse


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A scratch directory of small inputs, good and bad."""
    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "docs.jsonl").write_text('{"body": "a document"}\n')
    (tmp_path / "torn.jsonl").write_text('{"text": "a document"}\n{"text": "unfinish')
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / "fake.parquet").write_text("not parquet")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "a_file").write_text("I am a file")
    return tmp_path


def tokenizer_train(files: Path, *extra: str, source: str = "text.txt") -> list[str]:
    args = ["tokenizer", "train", "--input", str(files / source), "--vocab-size", "300"]
    return [*args, "--out", str(files / "tok"), *extra]


@pytest.mark.parametrize(
    "source, extra, expected",
    [
        ("text.txt", ["--vocab-size", "1000000000"], "vocab size"),
        ("text.txt", ["--vocab-size", "100"], "at least|between"),
        ("text.txt", ["--vocab-size", "-5"], "vocab size"),
        ("text.txt", ["--vocab-size", "3e2"], "invalid int"),
        ("text.txt", ["--val-fraction", "1.5"], "val fraction"),
        ("text.txt", ["--val-fraction", "-0.1"], "val fraction"),
        ("text.txt", ["--val-fraction", "nan"], "val fraction"),
        ("text.txt", ["--max-chars", "0"], "max chars"),
        ("text.txt", ["--max-chars", "-1"], "max chars"),
        ("text.txt", ["--frobnicate"], "unrecognized"),
        ("missing.txt", [], "missing.txt"),
        ("latin1.txt", [], "UTF-8"),
        ("empty.txt", [], "empty"),
        ("docs.jsonl", [], "no field 'text'"),
        ("torn.jsonl", [], "torn.jsonl:2"),
        ("notes.csv", [], "csv"),
        ("fake.parquet", [], "parquet"),
        ("empty_dir", [], "empty_dir"),
    ],
)
def test_tokenizer_train_refuses(files, capsys, source, extra, expected):
    line = refuse(tokenizer_train(files, *extra, source=source), capsys, protect=[files])
    assert any(word in line for word in expected.split("|")), line


def test_tokenizer_train_refuses_a_file_as_out_before_training(files, capsys):
    argv = tokenizer_train(files)
    argv[argv.index("--out") + 1] = str(files / "a_file")
    assert "is a file" in refuse(argv, capsys, protect=[files])


def test_tokenizer_train_refuses_an_out_under_a_file(files, capsys):
    argv = tokenizer_train(files)
    argv[argv.index("--out") + 1] = str(files / "a_file" / "tok")
    assert "a_file is a file" in refuse(argv, capsys, protect=[files])


def test_tokenizer_train_requires_out(files, capsys):
    argv = tokenizer_train(files)
    assert "--out" in refuse(argv[: argv.index("--out")], capsys, protect=[files])


def data_prepare(
    files: Path, tokenizer_dir: Path, *extra: str, out: str = "prepared", source="text.txt"
) -> list[str]:
    args = ["data", "prepare", "--input", str(files / source)]
    return [*args, "--tokenizer", str(tokenizer_dir), "--out", str(files / out), *extra]


@pytest.mark.parametrize(
    "source, extra, expected",
    [
        ("text.txt", ["--shard-tokens", "0"], "shard tokens"),
        ("text.txt", ["--shard-tokens", "-10"], "shard tokens"),
        ("text.txt", ["--shard-tokens", "many"], "invalid int"),
        ("text.txt", ["--val-fraction", "1"], "val fraction"),
        ("nowhere.txt", [], "nowhere.txt"),
        ("latin1.txt", [], "UTF-8"),
        ("docs.jsonl", [], "no field 'text'"),
        ("docs.jsonl", ["--text-field", "title"], "no field 'title'"),
    ],
)
def test_data_prepare_refuses(files, tokenizer_dir, capsys, source, extra, expected):
    argv = data_prepare(files, tokenizer_dir, *extra, source=source)
    line = refuse(argv, capsys, protect=[files, tokenizer_dir])
    assert expected in line


@pytest.mark.parametrize("out", ["a_file", "a_file/prepared"])
def test_data_prepare_refuses_an_out_that_is_or_sits_under_a_file(
    files, tokenizer_dir, capsys, out
):
    line = refuse(data_prepare(files, tokenizer_dir, out=out), capsys, protect=[files])
    assert "is a file" in line


def test_data_prepare_refuses_a_missing_or_broken_tokenizer(files, capsys):
    missing = data_prepare(files, files / "no_tokenizer")
    assert "no tokenizer" in refuse(missing, capsys, protect=[files])
    (files / "broken").mkdir()
    (files / "broken" / "tokenizer.json").write_text('{"model": 3}')
    broken = data_prepare(files, files / "broken")
    assert "not a valid tokenizer.json" in refuse(broken, capsys, protect=[files])


def test_data_prepare_refuses_a_directory_made_with_another_tokenizer(
    files, data_dir, tokenizer_dir, capsys, tmp_path
):
    other = tmp_path / "other_tokenizer"
    from parcae.data.tokenizer import Tokenizer

    Tokenizer.train(["something else entirely " * 50], 300).save(other)
    prepared = tmp_path / "prepared_copy"
    shutil.copytree(data_dir, prepared)
    argv = data_prepare(files, other)
    argv[argv.index("--out") + 1] = str(prepared)
    line = refuse(argv, capsys, protect=[prepared, other])
    assert "another tokenizer" in line


@pytest.fixture
def prepared_copy(data_dir, tmp_path) -> Path:
    copy = tmp_path / "prepared"
    shutil.copytree(data_dir, copy)
    return copy


def _first_shard(prepared: Path) -> Path:
    manifest = json.loads((prepared / "manifest.json").read_text())
    return prepared / manifest["splits"]["train"]["shards"][0]["file"]


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("missing", "not a prepared dataset"),
        ("file", "not a prepared dataset"),
        ("truncated_shard", "truncated"),
        ("garbage_manifest", "manifest.json"),
        ("old_format", "format"),
        ("interrupted", "interrupted"),
    ],
)
def test_data_info_refuses_a_damaged_dataset(prepared_copy, capsys, damage, expected):
    target = prepared_copy
    if damage == "missing":
        target = prepared_copy / "nowhere"
    elif damage == "file":
        target = prepared_copy / "manifest.json"
    elif damage == "truncated_shard":
        shard = _first_shard(prepared_copy)
        shard.write_bytes(shard.read_bytes()[:-2])
    elif damage == "garbage_manifest":
        (prepared_copy / "manifest.json").write_text("{not json")
    elif damage == "old_format":
        manifest = json.loads((prepared_copy / "manifest.json").read_text())
        manifest["format"] = 0
        (prepared_copy / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "interrupted":
        (prepared_copy / "manifest.json").rename(prepared_copy / "progress.json")
    line = refuse(["data", "info", "--data", str(target)], capsys, protect=[prepared_copy])
    assert expected in line


@pytest.mark.parametrize("seq_len, expected", [("0", "positive"), ("10000000", "fewer than")])
def test_data_info_refuses_a_bad_seq_len(data_dir, capsys, seq_len, expected):
    argv = ["data", "info", "--data", str(data_dir), "--seq-len", seq_len]
    assert expected in refuse(argv, capsys, protect=[data_dir])


def test_a_shard_with_ids_beyond_the_vocabulary_is_named_when_read(prepared_copy):
    """The bytes of a shard rewritten with an id the tokenizer does not have: reading a batch
    that holds it is a DataError naming the split, not an IndexError inside the model."""
    from parcae.data.loader import TokenLoader
    from parcae.errors import DataError

    shard = _first_shard(prepared_copy)
    manifest = json.loads((prepared_copy / "manifest.json").read_text())
    tokens = np.fromfile(shard, dtype=manifest["dtype"])
    tokens[:] = manifest["vocab_size"]  # one past the last id
    tokens.tofile(shard)
    loader = TokenLoader(prepared_copy, "train", batch_size=64, seq_len=32)
    with pytest.raises(DataError, match=r"\(train\): row \d+ holds token id \d+, outside"):
        for _ in range(50):
            loader.next_batch()
