"""Hardware figures: the matmul peak that MFU is relative to (a data-sheet figure for known GPUs
in bf16, else measured in-process), and whether bfloat16 is worth using on a device."""

from __future__ import annotations

import ctypes
import functools
import math
import platform
import time
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, by a part of
# the device name; the first match wins, so the PCIe H100 comes before the SXM one.
NOMINAL_BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


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


def nominal_peak_flops(dtype: torch.dtype, device: str | torch.device) -> float | None:
    """The data-sheet dense peak of `device` in `dtype`, where known (bf16 on the GPUs of
    NOMINAL_BF16_PEAKS), else None."""
    device = torch.device(device)
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in NOMINAL_BF16_PEAKS if part in name), None)


def peak_flops(dtype: torch.dtype, device: str | torch.device, trials: int = 3) -> float:
    """The matmul peak MFU is measured against: the nominal figure where one is known, else the
    best of `trials` measurements of `matmul_peak_flops` (each the fastest matmul of its window),
    so that a window shared with other work (a compiler's worker processes starting up) does not
    lower it."""
    nominal = nominal_peak_flops(dtype, device)
    if nominal is not None:
        return nominal
    return max(matmul_peak_flops(dtype, device, seconds=0.25) for _ in range(trials))


# glibc mallopt parameters (malloc.h) and the largest trim threshold an int holds
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
NEVER_TRIM = 2**31 - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: large blocks come from the heap rather
    than mmap (M_MMAP_MAX = 0), and the heap is not trimmed back to the OS (M_TRIM_THRESHOLD
    2 GiB). A CPU training step frees and allocates the same large activations every step;
    memory returned to the OS comes back as fresh pages, each faulted in on first touch (a
    9 MB elementwise product took 3.2 ms instead of 0.6). Measured on parcae-tiny fp32 steps:
    ~8% faster. The process then holds its peak memory until it exits. Returns whether it
    applied (Linux with glibc only; elsewhere nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
