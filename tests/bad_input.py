"""The contract every `tests/<area>/test_bad_input.py` checks: bad input to a `parcae` command
exits with code 2 and exactly one line on stderr, with no traceback, and leaves the files it was
given untouched (compared by checksum).

    def test_refused(case, capsys, tmp_path):
        line = refuse(["train", "lr=inf"], capsys, protect=[tmp_path])
        assert "lr" in line
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from parcae.cli import main


def checksum(path: str | os.PathLike) -> str | None:
    """sha256 over a file, or over every file under a directory (relative names and contents);
    None for a path that does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def refuse(
    argv: list[str],
    capsys,
    protect: Iterable[str | os.PathLike] = (),
    main: Callable[[list[str]], int] = main,
) -> str:
    """Run `parcae ARGV` (or another command line's `main`, e.g. an experiments script's) in this
    process and assert the bad-input contract; returns the line."""
    protect = list(protect)
    before = [checksum(path) for path in protect]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code} for {argv}; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{len(lines)} lines on stderr for {argv}:\n{err}"
    assert [checksum(path) for path in protect] == before, f"{argv} changed its inputs"
    return lines[0]
