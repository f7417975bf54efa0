"""Bad input to `parcae reproduce run|report`: each case exits 2 with one line on stderr, no
traceback, and its inputs untouched (`tests/bad_input.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_input import refuse


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--study", "S9"], "invalid choice"),
        (["run", "--quick", "--study", "S1", "--runs", "{s}/a_file"], "--runs"),
        (["run", "--quick", "--study", "S1", "--runs", "{s}/a_file/runs"], "--runs"),
        (
            ["run", "--quick", "--study", "S1", "--runs", "{s}/r", "--results", "{s}/a_file"],
            "--results",
        ),
        (["run", "--quick", "--study", "S2", "--runs", "{s}/empty"], "run `parcae reproduce run"),
        (["report", "--results", "{s}/nowhere"], "no results in"),
        (["report", "--results", "{s}/empty"], "no results in"),
        (["report", "--results", "{s}/a_file"], "no results in"),
        (["report", "--frobnicate"], "unrecognized"),
    ],
)
def test_reproduce_refuses(scratch, capsys, argv, expected):
    argv = [arg.replace("{s}", str(scratch)) for arg in argv]
    line = refuse(["reproduce", *argv], capsys, protect=[scratch / "a_file", scratch / "empty"])
    assert expected in line
