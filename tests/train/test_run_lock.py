"""One run per out_dir: a second run on a directory in use is refused in one line naming the
holder, the lock goes with its holder (even on kill -9), and an out_dir that is a file or
cannot be created is one line."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parcae.train import lock
from parcae.train.distributed import DistInfo
from parcae.train.lock import LOCK_FILE, run_lock
from parcae.train.loop import train
from tests.bad_input import refuse

from .conftest import tiny_config

CPU = torch.device("cpu")

HOLDER = """
import sys, time, torch
from parcae.train.distributed import DistInfo
from parcae.train.lock import run_lock
with run_lock(sys.argv[1], DistInfo(), torch.device("cpu"), print):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def existing(data_dir, tmp_path_factory):
    """A finished 2-step run and the config that resumes it."""
    out = tmp_path_factory.mktemp("existing") / "run"
    train(tiny_config(data_dir, out, max_steps=2))
    config = out.parent / "resume.yaml"
    tiny_config(data_dir, out, max_steps=4, resume=True).save(config)
    return out, config


@pytest.fixture
def holder(existing):
    """Another process holding the lock of the existing run's directory."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(existing[0])], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "locked\n"
    yield process
    process.kill()
    process.wait()


def _locked_by_someone(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_run_in_use_is_refused_naming_the_holder(existing, holder, capsys):
    run, config = existing
    records = [run / "metrics.jsonl", run / "config.yaml", run / "checkpoints"]
    line = refuse(["train", str(config)], capsys, protect=records)
    assert line == (
        f"parcae: error: {run} is in use by another parcae run (pid {holder.pid} on "
        f"{socket.gethostname()}); wait for it or choose another out_dir"
    )
    fresh = refuse(["train", str(config), "resume=false"], capsys, protect=records)
    assert f"pid {holder.pid}" in fresh


def test_the_lock_goes_with_a_killed_holder(existing, holder):
    run, _ = existing
    assert _locked_by_someone(run / LOCK_FILE)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not _locked_by_someone(run / LOCK_FILE)  # the kernel released it: nothing stale


def test_a_second_open_file_description_in_one_process_conflicts(data_dir, tmp_path, capsys):
    with run_lock(tmp_path, DistInfo(), CPU, print):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        config = tmp_path / "run.yaml"
        tiny_config(data_dir, tmp_path).save(config)
        line = refuse(["train", str(config)], capsys)
        assert f"is in use by another parcae run (pid {os.getpid()} on" in line
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released, holder no longer named
    assert not _locked_by_someone(tmp_path / LOCK_FILE)


def test_the_lock_is_released_when_training_fails(data_dir, tmp_path):
    def explode(model, step):
        with torch.no_grad():
            model.transformer.wte.weight.fill_(float("nan"))

    with pytest.raises(Exception, match="loss is nan"):
        train(tiny_config(data_dir, tmp_path, max_steps=3), after_backward=explode)
    assert not _locked_by_someone(tmp_path / LOCK_FILE)


def test_only_the_main_process_locks(tmp_path):
    with run_lock(tmp_path / "run", DistInfo(rank=1, world_size=1), CPU, print):
        assert not (tmp_path / "run").exists()


def test_an_out_dir_that_is_a_file_is_one_line(data_dir, tmp_path, capsys):
    file = tmp_path / "somefile"
    file.write_text("precious")
    config = tmp_path / "run.yaml"
    tiny_config(data_dir, file).save(config)
    line = refuse(["train", str(config)], capsys, protect=[file])
    assert line == f"parcae: error: out_dir {file} is a file, not a directory"


def test_an_out_dir_that_cannot_be_created_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    out_dir, real_mkdir = tmp_path / "forbidden" / "run", Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == out_dir:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    config = tmp_path / "run.yaml"
    tiny_config(data_dir, out_dir).save(config)
    line = refuse(["train", str(config)], capsys)
    assert line == f"parcae: error: cannot create out_dir {out_dir}: Permission denied"


def test_a_filesystem_without_flock_trains_unguarded_with_a_warning(
    data_dir, tmp_path, capsys, monkeypatch
):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    assert train(tiny_config(data_dir, tmp_path, max_steps=1)).steps == 1
    assert (
        f"parcae: cannot lock {tmp_path / LOCK_FILE} (No locks available); {tmp_path} is not "
        "guarded against a second run"
    ) in capsys.readouterr().err
