"""Safe output files (`parcae.outputs`): atomic replacement through unique temporaries that are
never opened through a planted symlink, stale temporaries of killed writers cleaned, and model
directories that appear whole or not at all; with the commands that write through them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from parcae.outputs import staged_directory, write_atomic, write_json_atomic, write_text_atomic


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("planted", [".out.json.tmp", ".out.json.onnx.tmp"])
def test_a_planted_symlink_at_the_old_temporary_name_is_not_followed(tmp_path, planted):
    """The temporaries used to have fixed names: a link planted there redirected the write."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / planted).symlink_to(victim)
    write_text_atomic(tmp_path / "out.json", "result")
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.json").read_text() == "result"


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.json").symlink_to(victim)
    write_text_atomic(tmp_path / "out.json", "result")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "out.json").is_symlink()


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_stale_temporaries_of_killed_writers_are_cleaned_live_ones_kept(tmp_path):
    stale = tmp_path / f".out.json.{dead_pid()}.abcd1234.tmp"
    stale.write_text("torn")
    live = tmp_path / f".out.json.{os.getpid()}.abcd1234.tmp"
    live.write_text("being written")
    other = tmp_path / f".other.json.{dead_pid()}.abcd1234.tmp"
    other.write_text("someone else's")
    write_text_atomic(tmp_path / "out.json", "x")
    assert not stale.exists() and live.exists() and other.exists()


def test_json_is_written_valid_without_nan(tmp_path):
    path = write_json_atomic(tmp_path / "fit.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.0]}


def test_files_get_the_umask_mode_not_mkstemp_private_one(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_staged_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            (staging / "config.json").write_text("{}")
            raise RuntimeError("killed midway")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with staged_directory(target) as staging:
        (staging / "config.json").write_text("{}")
        assert not target.exists()
    assert (target / "config.json").read_text() == "{}"


def test_a_staged_directory_never_replaces_a_non_empty_one(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep").write_text("mine")
    with pytest.raises(OSError):
        with staged_directory(target) as staging:
            (staging / "config.json").write_text("{}")
    assert (target / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_killed_save_leaves_no_model_directory(tmp_path, monkeypatch):
    """save_pretrained into a new directory: a failure after the weights leaves nothing that
    could load as a model."""
    from parcae.model import serialization
    from tests.infer.conftest import tiny_model

    model = tiny_model("parcae-tiny")

    def killed(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(serialization, "write_text_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
