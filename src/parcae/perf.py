"""Hardware figures measured in-process: the matmul peak that MFU is relative to, and whether
bfloat16 is worth using on a device."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX). Without it,
    bf16 matmuls are emulated and run ~100x slower than float32 (seen on AVX2-only CPUs)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def bf16_is_fast(device: str | torch.device) -> bool:
    """bfloat16 autocast speeds up matmuls on CUDA (compute capability 8+) and on CPUs with
    native bf16 instructions; elsewhere float32 is the faster choice."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_has_native_bf16()


def matmul_peak_flops(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    size: int | None = None,
    seconds: float = 0.5,
) -> float:
    """Peak FLOP/s of a square `size`×`size` matmul in `dtype` on `device`: 2·size³ over the
    fastest of the matmuls timed during `seconds` (size: 1024 on CPU, 8192 on GPU).

    Model FLOP utilisation (MFU) = model FLOPs per second / this figure, so that MFU means the
    same thing on a laptop CPU and a datacenter GPU. Taking the fastest run rather than the
    mean keeps the figure steady when other work shares the device for part of the window.
    """
    device = torch.device(device)
    size = size or (1024 if device.type == "cpu" else 8192)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm up kernels and thread pools
    synchronize(device)
    fastest, deadline = math.inf, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        a @ b
        synchronize(device)
        now = time.perf_counter()
        fastest = min(fastest, now - start)
        if now >= deadline:
            return 2.0 * size**3 / fastest
