"""One run per output directory: an exclusive lock on `OUT_DIR/.lock` while a run trains.

The main process creates `out_dir`, takes `fcntl.flock(LOCK_EX | LOCK_NB)` on `OUT_DIR/.lock`
and writes `<pid> <host>` into it, so that a second run on the same directory is refused naming
the holder. A flock belongs to the open file description: it is released when the run ends (the
file is emptied, then closed) and by the kernel when the process dies, kill -9 included, so a
`.lock` left behind never blocks a later run; only a living holder does. The file itself stays
(removing it would race with a run that has just opened it). On a filesystem without flock
support the run goes on unguarded, with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from parcae.errors import ConfigError
from parcae.outputs import output_directory
from parcae.train import distributed as dist

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(
    out_dir: str | os.PathLike,
    info: dist.DistInfo,
    device: torch.device,
    warn: Callable[[str], None],
) -> Iterator[None]:
    """Hold the lock of `out_dir` on the main process while the body runs. Every process raises
    ConfigError (one line) when the main one cannot take it: the directory is a file, cannot be
    created, or another run holds it."""
    refusal, fd = None, None
    if info.is_main:
        try:
            fd = _acquire(Path(out_dir), warn)
        except ConfigError as error:
            refusal = error
    if dist.any_rank(refusal is not None, info, device):
        raise refusal or ConfigError(
            f"the main process could not lock out_dir {out_dir} (see its error)", field="out_dir"
        )
    try:
        yield
    finally:
        if fd is not None:
            _release(fd)


def _acquire(out_dir: Path, warn: Callable[[str], None]) -> int | None:
    """The descriptor of the locked `.lock` file (None where flock is not supported)."""
    output_directory(out_dir, "out_dir")
    path = out_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise ConfigError(
            f"cannot open {path} to lock out_dir: {error.strerror or error}", field="out_dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"{out_dir} is in use by another parcae run ({_holder(path)}); wait for it or "
            "choose another out_dir",
            field="out_dir",
        ) from None
    except OSError as error:  # e.g. ENOLCK: a network filesystem without flock
        os.close(fd)
        warn(
            f"parcae: cannot lock {path} ({error.strerror or error}); {out_dir} is not guarded "
            "against a second run"
        )
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _holder(path: Path) -> str:
    """`pid N on HOST` as the holder wrote it into `path`."""
    try:
        fields = path.read_text().split()
    except (OSError, UnicodeDecodeError):
        fields = []
    return f"pid {fields[0]} on {fields[1]}" if len(fields) == 2 else "pid unknown"


def _release(fd: int) -> None:
    """Empty the lock file (its PID is stale from now on) and close it, releasing the lock."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)
