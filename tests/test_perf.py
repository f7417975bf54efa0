"""Process-level speed settings: glibc's malloc keeps freed memory for the next step."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from parcae.perf import keep_freed_memory


def _resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc (Linux)")
def test_freed_activations_stay_in_the_process_for_reuse():
    """A 96 MB block is above glibc's largest mmap threshold (32 MB): by default freeing it
    unmaps it, and the next one faults in fresh pages. Kept, freeing leaves it resident."""
    assert keep_freed_memory()
    size = 96 * 2**20
    before = _resident_bytes()
    block = torch.ones(size // 4)
    allocated = _resident_bytes()
    del block
    freed = _resident_bytes()
    assert allocated - before > 0.9 * size
    assert allocated - freed < 0.1 * size  # still resident, ready for the next step
