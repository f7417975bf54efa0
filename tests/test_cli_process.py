"""Bad input through a real `python -m parcae` process: exit code 2 and exactly one stderr line,
with nothing a library prints on its own (warnings, progress bars) and no abort from native code.
The in-process cases of every command are in tests/<area>/test_bad_input.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(
    "argv, expected",
    [
        # was a Rust abort (exit 134) after trying to allocate about 70 GB
        (
            ["tokenizer", "train", "--input", "{tmp}/a.txt", "--vocab-size", "1000000000"]
            + ["--out", "{tmp}/tok"],
            "vocab size must be between",
        ),
        (
            [
                "train",
                "data={tmp}/a.txt",
                "device=cuda:99" if torch.cuda.is_available() else "device=cuda",
            ],
            "but this machine has",
        ),
    ],
)
def test_a_real_process_prints_one_line_and_exits_2(tmp_path, argv, expected):
    (tmp_path / "a.txt").write_text("some text\n")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "parcae", *argv], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "tok").exists()
