"""`parcae tokenizer train`, `parcae data prepare|info`: output, and one-line errors with exit
code 2."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parcae import cli, commands
from parcae.data.shards import MANIFEST, PROGRESS


@pytest.fixture
def run(monkeypatch, capsys):
    """Run the real dispatcher with only the data commands; returns (exit code, stdout, last
    stderr line).

    Progress bars (also on stderr) may precede the error line; nothing may follow it.
    """
    monkeypatch.setattr(commands, "COMMAND_MODULES", ("parcae.data.commands",))

    def invoke(*argv):
        code = cli.main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err.rstrip("\n").rpartition("\n")[2]

    return invoke


def test_tokenizer_train_reports_heldout_compression(run, plays_dir, tmp_path):
    code, out, _ = run(
        "tokenizer", "train", "--input", plays_dir, "--vocab-size", 300, "--out", tmp_path
    )
    assert code == 0 and (tmp_path / "tokenizer.json").is_file()
    assert "trained a 300-token tokenizer on 5 documents" in out
    assert "bytes/token on 1 held-out documents" in out


def test_tokenizer_train_without_heldout_documents_says_so(run, plays_dir, tmp_path):
    code, out, _ = run(
        "tokenizer",
        "train",
        "--input",
        plays_dir,
        "--vocab-size",
        300,
        "--out",
        tmp_path,
        "--val-fraction",
        0,
    )
    assert code == 0 and "no held-out documents" in out


def test_prepare_then_info(run, plays_dir, tokenizer_dir, tmp_path):
    code, out, _ = run(
        "data", "prepare", "--input", plays_dir, "--tokenizer", tokenizer_dir, "--out", tmp_path
    )
    assert code == 0 and "train: 5 documents" in out and "val: 1 documents" in out
    code, out, _ = run("data", "info", "--data", tmp_path, "--seq-len", 128)
    assert code == 0 and "packing efficiency" in out


def write(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing.txt", "no such file or directory"),
        (lambda d: write(d / "empty.jsonl", b"\n\n"), "empty input"),
        (lambda d: write(d / "image.txt", b"\x89PNG\r\n\x1a\n\0\0"), "binary data"),
        (lambda d: write(d / "latin1.txt", "Fran\u00e7ais".encode("latin-1")), "not UTF-8"),
        (
            lambda d: write(d / "bad.jsonl", b'{"text": "a"}\nnot json\n'),
            "bad.jsonl:2: not valid JSON",
        ),
        (lambda d: write(d / "field.jsonl", b'{"content": "a"}\n'), "no field 'text'"),
        (
            lambda d: (pq.write_table(pa.table({"body": ["a"]}), d / "t.parquet"), d / "t.parquet")[
                1
            ],
            "no column 'text'",
        ),
    ],
)
@pytest.mark.parametrize("command", ["tokenizer", "prepare"])
def test_bad_input_is_one_line_and_exit_code_2(
    run, tokenizer_dir, tmp_path, make_input, message, command
):
    source = make_input(tmp_path)
    out_dir = tmp_path / "out"
    argv = {
        "tokenizer": (
            "tokenizer",
            "train",
            "--input",
            source,
            "--vocab-size",
            300,
            "--out",
            out_dir,
        ),
        "prepare": (
            "data",
            "prepare",
            "--input",
            source,
            "--tokenizer",
            tokenizer_dir,
            "--out",
            out_dir,
        ),
    }[command]
    code, _, err = run(*argv)
    assert code == 2
    assert err.startswith("parcae: error:") and message in err
    assert not (out_dir / MANIFEST).exists() and not (out_dir / "tokenizer.json").exists()


def test_tokenizer_shard_mismatch_is_one_line(run, data_dir, plays_dir, tmp_path):
    run("tokenizer", "train", "--input", plays_dir, "--vocab-size", 300, "--out", tmp_path)
    code, _, err = run(
        "data", "prepare", "--input", plays_dir, "--tokenizer", tmp_path, "--out", data_dir
    )
    assert code == 2 and err.startswith("parcae: error:") and "another tokenizer" in err


def test_interrupted_preparation_is_one_line(run, tmp_path):
    (tmp_path / PROGRESS).write_text(json.dumps({}))
    code, _, err = run("data", "info", "--data", tmp_path)
    assert code == 2 and err.startswith("parcae: error:") and "interrupted" in err
