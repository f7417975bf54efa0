"""Shard preparation: content, manifest, dtype, split, atomicity, resume and refusals."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from parcae.data import prepare as prepare_module
from parcae.data.prepare import load_manifest, prepare_dataset
from parcae.data.shards import MANIFEST, PROGRESS, open_split, token_dtype
from parcae.data.split import split_of
from parcae.data.tokenizer import Tokenizer
from parcae.errors import DataError


def split_tokens(data_dir, split):
    manifest = load_manifest(data_dir)
    return np.concatenate(open_split(data_dir, split, manifest))


def test_shards_hold_every_document_after_a_bos(data_dir, plays_dir, tokenizer):
    manifest = load_manifest(data_dir)
    for split in ("train", "val"):
        tokens = split_tokens(data_dir, split)
        starts = np.flatnonzero(tokens == tokenizer.bos_id).tolist()
        assert starts[0] == 0 and len(starts) == manifest["splits"][split]["documents"]
        texts = [tokenizer.decode(doc) for doc in np.split(tokens, starts[1:])]
        expected = [
            p.read_text()
            for p in sorted(plays_dir.iterdir())
            if split_of(p.read_text(), 0.05) == split
        ]
        assert [text.removeprefix("<|bos|>") for text in texts] == expected


def test_manifest_counts_tokens_documents_and_bytes(data_dir, plays_dir, tokenizer):
    manifest = load_manifest(data_dir)
    assert manifest["tokenizer_hash"] == tokenizer.hash
    assert manifest["source"] == str(plays_dir)
    assert manifest["dtype"] == "<u2"
    for split in ("train", "val"):
        record = manifest["splits"][split]
        assert (
            record["tokens"]
            == len(split_tokens(data_dir, split))
            == sum(s["tokens"] for s in record["shards"])
        )
    assert len(manifest["splits"]["train"]["shards"]) > 1
    total_bytes = sum(len(p.read_bytes()) for p in plays_dir.iterdir())
    assert manifest["splits"]["train"]["bytes"] + manifest["splits"]["val"]["bytes"] == total_bytes
    assert (
        manifest["splits"]["val"]["documents"] == 1
        and manifest["splits"]["train"]["documents"] == 5
    )


def test_prepared_directory_carries_the_tokenizer(data_dir, tokenizer):
    assert Tokenizer.load(data_dir).hash == tokenizer.hash


def test_dtype_is_uint16_only_when_the_vocab_fits():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_rerun_is_a_no_op(data_dir, plays_dir, tokenizer_dir):
    mtimes = {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()}
    manifest = prepare_dataset(
        str(plays_dir), tokenizer_dir, data_dir, shard_tokens=20_000, progress=False
    )
    assert manifest == load_manifest(data_dir)
    assert {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()} == mtimes


def test_shards_of_another_tokenizer_are_refused(data_dir, plays_dir, tmp_path):
    Tokenizer.train([p.read_text() for p in plays_dir.iterdir()], 300).save(tmp_path)
    with pytest.raises(DataError, match="another tokenizer"):
        prepare_dataset(str(plays_dir), tmp_path, data_dir, progress=False)
    with pytest.raises(DataError, match="shards were made with tokenizer"):
        load_manifest(data_dir, tokenizer_hash=Tokenizer.load(tmp_path).hash)


def test_reusing_a_directory_for_another_source_is_refused(data_dir, tokenizer_dir, tmp_path):
    (tmp_path / "a.txt").write_text("other corpus")
    with pytest.raises(DataError, match="was prepared with source="):
        prepare_dataset(str(tmp_path / "a.txt"), tokenizer_dir, data_dir, progress=False)


class Interrupt(Exception):
    pass


def interrupt_after(count, iter_documents):
    def documents(*args, **kwargs):
        yield from itertools.islice(iter_documents(*args, **kwargs), count)
        raise Interrupt

    return documents


def test_interrupted_preparation_is_not_a_dataset_and_resumes_to_the_same_shards(
    data_dir, plays_dir, tokenizer_dir, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(
            prepare_module, "iter_documents", interrupt_after(4, prepare_module.iter_documents)
        )
        patch.setattr(prepare_module, "BATCH_CHARS", 1)  # tokenise one document at a time
        with pytest.raises(Interrupt):
            prepare_dataset(str(plays_dir), tokenizer_dir, out, shard_tokens=20_000, progress=False)
    assert not (out / MANIFEST).exists() and (out / PROGRESS).exists()
    progress = json.loads((out / PROGRESS).read_text())
    assert 0 < progress["documents_read"] <= 4
    assert progress["documents_read"] == sum(
        record["documents"] for record in progress["splits"].values()
    )
    with pytest.raises(DataError, match="interrupted"):
        load_manifest(out)

    manifest = prepare_dataset(
        str(plays_dir), tokenizer_dir, out, shard_tokens=20_000, progress=False
    )
    assert manifest == load_manifest(data_dir) and not (out / PROGRESS).exists()
    for split in ("train", "val"):
        assert np.array_equal(split_tokens(out, split), split_tokens(data_dir, split))


def test_truncated_shard_is_refused(data_dir, tmp_path):
    for path in data_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    shard = tmp_path / load_manifest(data_dir)["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="missing or truncated"):
        load_manifest(tmp_path)


def test_directory_without_manifest_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_manifest(tmp_path)


def test_empty_input_leaves_no_manifest(tokenizer_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty input"):
        prepare_dataset(
            str(tmp_path / "empty.txt"), tokenizer_dir, tmp_path / "out", progress=False
        )
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_missing_tokenizer_is_refused(plays_dir, tmp_path):
    with pytest.raises(DataError, match="no tokenizer"):
        prepare_dataset(str(plays_dir), tmp_path / "nowhere", tmp_path / "out", progress=False)
