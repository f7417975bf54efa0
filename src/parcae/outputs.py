"""Output files and directories: checked before any work starts, and written atomically.

Paths named by a user (`--out`, `out_dir=`) are checked first (`check_not_file`,
`output_directory`, `output_file`), so that a path that is a file, or cannot be created, is one
line instead of a traceback after minutes of work. Every file the project replaces is written
by `write_atomic` (unique temporary, O_EXCL|O_NOFOLLOW, fsync, rename), and a model directory
appears whole or not at all (`staged_directory`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from parcae.errors import ConfigError


def check_not_file(path: str | os.PathLike, what: str = "output directory") -> Path:
    """`path`, refused (ConfigError naming `what`) when it, or a parent, is an existing file;
    nothing is created. For checks before the work that ends in `output_directory`."""
    path = Path(path)
    for node in (path, *path.parents):
        if node.exists():
            if node == path and not node.is_dir():
                raise ConfigError(f"{what} {path} is a file, not a directory")
            if not node.is_dir():
                raise ConfigError(f"cannot create {what} {path}: {node} is a file")
            break
    return path


def output_directory(path: str | os.PathLike, what: str = "output directory") -> Path:
    """`path` as an existing directory (created with its parents if missing); a ConfigError
    naming `what` when it is a file or cannot be created."""
    path = check_not_file(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create {what} {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable")
    return path


def output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """`path` as a file that can be written: its parent directories are created; a ConfigError
    naming `what` when it is a directory or its parent cannot be a directory."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; name a file")
    output_directory(path.parent, f"the directory of {what}")
    return path


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporaries of `path` (`.NAME.PID.*.tmp`) left by writers that died (their
    process is gone); a live writer's are kept."""
    prefix = _temporary_prefix(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


@functools.cache
def _umask() -> int:
    """The process's umask: new files get 0o666 and directories 0o777 less it, as `open()` and
    `mkdir()` give them (mkstemp and mkdtemp give 0o600 and 0o700)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Replace `path` with what `write(handle)` writes, atomically: readers see the old file or
    the new one, never half of one. The bytes go to a new temporary `.NAME.PID.XXXXXXXX.tmp`
    in `path`'s directory (`tempfile.mkstemp`: a unique name, created with O_EXCL and
    O_NOFOLLOW, so a planted file or symlink is never written through), fsynced and renamed
    over `path` (`os.replace`; a symlink at `path` is replaced, not followed). On any failure
    the temporary is removed and the error propagates. Temporaries of killed writers of `path`
    are removed first."""
    path = Path(path)
    _remove_stale_temporaries(path)
    try:
        fd, temporary = tempfile.mkstemp(
            prefix=f"{_temporary_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
    except OSError as error:  # named by the file the caller asked for, not the temporary
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`write_atomic` of `text` in UTF-8."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON has no such numbers (Python would write
    `NaN`, which other readers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """`write_atomic` of `data` as valid JSON (non-finite numbers as null, `json_safe`)."""
    return write_text_atomic(path, json.dumps(json_safe(data), indent=indent) + "\n")


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A new empty directory to fill, renamed to `target` when the block ends without error (and
    removed when it fails), so `target` appears whole or not at all. `target` must not exist or
    be an empty directory. The staging directory is a sibling `.NAME.PID.XXXXXXXX.tmp`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    staging = Path(
        tempfile.mkdtemp(
            prefix=f"{_temporary_prefix(target)}{os.getpid()}.", suffix=".tmp", dir=target.parent
        )
    )
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if target.is_dir() and not target.is_symlink():
            target.rmdir()  # empty, or OSError: nothing is overwritten
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
