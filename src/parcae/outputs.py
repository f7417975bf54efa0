"""Output directories named by a user (`--out`, `out_dir=`): checked before any work starts, so
that a path that is a file, or cannot be created, is one line instead of a traceback after
minutes of work."""

from __future__ import annotations

import os
from pathlib import Path

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
