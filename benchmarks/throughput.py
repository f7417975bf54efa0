"""Model throughput: forward and forward+backward tokens/s, and MFU against the device's peak
(`parcae.perf.peak_flops`: the best the machine has shown, or a GPU's data sheet), in float32
and bfloat16 autocast.

    python benchmarks/throughput.py [--presets parcae-tiny parcae-140m] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

import parcae
from parcae.model.flops import forward_flops_per_token, training_flops_per_token
from parcae.perf import bf16_is_fast, peak_flops, synchronize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast(device: torch.device, name: str):
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[name])


def timed(step, iterations: int, device: torch.device) -> float:
    """Seconds per call of `step`, after one warm-up call."""
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / iterations


def benchmark_preset(name: str, args, device: torch.device, peaks: dict[str, float]) -> None:
    model = parcae.create_model(name, device=device)
    config = model.config
    seq = min(args.seq_len, config.context_length)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, seq), device=device)
    tokens = ids.numel()
    generator = torch.Generator().manual_seed(0)
    print(f"\n{name}: {model.num_params():,} parameters, batch {args.batch_size} x {seq} tokens")
    for dtype_name in args.dtypes:
        if dtype_name == "bf16" and not bf16_is_fast(device):
            print(
                f"  bf16: skipped, {device} has no native bf16 matmul "
                f"({peaks['bf16'] / 1e9:.1f} GFLOP/s vs {peaks['fp32'] / 1e9:.0f} in fp32)"
            )
            continue
        model.eval()

        def forward(dtype_name=dtype_name):
            with torch.no_grad(), autocast(device, dtype_name):
                model(ids)

        model.train()

        def train_step(dtype_name=dtype_name):
            plan = (
                model.sample_depth_plan(args.batch_size, seq, generator)
                if model.config.is_looped
                else None
            )
            with autocast(device, dtype_name):
                loss = model(ids, labels=ids, depth_plan=plan).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

        model.eval()
        forward_s = timed(forward, args.iterations, device)
        model.train()
        train_s = timed(train_step, args.iterations, device)
        forward_flops = forward_flops_per_token(config, seq) * tokens
        train_flops = training_flops_per_token(config, seq) * tokens
        peak = peaks[dtype_name]
        print(
            f"  {dtype_name}: forward {tokens / forward_s:9.0f} tok/s "
            f"(MFU {forward_flops / forward_s / peak:6.1%})   "
            f"forward+backward {tokens / train_s:9.0f} tok/s "
            f"(MFU {train_flops / train_s / peak:6.1%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["parcae-tiny", "parcae-140m"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    peaks = {name: peak_flops(DTYPES[name], device) for name in ("fp32", "bf16")}
    print(
        f"device {device}, {torch.get_num_threads()} threads; matmul peak: "
        + ", ".join(f"{name} {flops / 1e9:.0f} GFLOP/s" for name, flops in peaks.items())
    )
    for name in args.presets:
        benchmark_preset(name, args, device, peaks)


if __name__ == "__main__":
    main()
