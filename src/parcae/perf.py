"""Hardware figures and settings: the matmul peak that MFU is relative to (a data-sheet figure
for known GPUs in bf16, else the best this machine has shown), whether bfloat16 is worth using
on a device, and keeping freed memory for reuse on a CPU."""

from __future__ import annotations

import ctypes
import functools
import json
import math
import platform
import time
from pathlib import Path

import torch

from parcae.outputs import write_text_atomic

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

PEAK_CACHE_FILE = "peak_flops.json"  # in $PARCAE_CACHE: the best peak each device has shown

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
    """The peak MFU is measured against: the nominal figure where one is known, else the best
    matmul rate this machine has shown, in this call (the fastest of `trials` windows of
    `matmul_peak_flops`) or any earlier one (`$PARCAE_CACHE/peak_flops.json`, by device,
    thread count, dtype and torch version). A host's speed drifts by ±30% over seconds, so
    one window can read low and make MFU read high; the best of every run converges on the
    device's real peak."""
    nominal = nominal_peak_flops(dtype, device)
    if nominal is not None:
        return nominal
    measured = max(matmul_peak_flops(dtype, device, seconds=0.25) for _ in range(trials))
    return _best_seen(_peak_key(dtype, torch.device(device)), measured)


def _peak_key(dtype: torch.dtype, device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_model()}, {torch.get_num_threads()} threads"
    return (
        f"{name} | {device.type} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_seen(key: str, measured: float) -> float:
    """max(measured, the figure stored under `key`), stored back; a cache that cannot be read
    or written leaves the measurement as it is."""
    from parcae.data.recipes import cache_root

    path = cache_root() / PEAK_CACHE_FILE
    try:
        seen = json.loads(path.read_text())
        seen = seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        seen = {}
    stored = seen.get(key)
    best = max(measured, stored) if isinstance(stored, (int, float)) else measured
    if best != stored:
        seen[key] = best
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(seen, indent=1, sort_keys=True))
        except OSError:
            pass
    return best


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
