"""Training speed of `parcae train`: tokens/s and MFU of the real training loop (data loading,
depth sampling, forward, backward, clipping, MuonAdamW), in float32 and bfloat16 autocast.

    python benchmarks/train_speed.py [--steps 8] [--precisions fp32 bf16] [key=value ...]

Each precision runs `parcae.train.loop.train` for `--steps` optimizer steps of the default
training config (plus any `key=value` overrides, as on the `parcae train` command line) and
reads the per-step records of `metrics.jsonl`; the first `--warmup` steps are left out of the
figures, which are totals over the timed steps (tokens / seconds; MFU weighted by step time, as
steps differ in their drawn loop depths). "warm-up" is what the first steps took beyond the
timed steps' mean: kernel selection, and with `compile=true` the compilation. bf16 runs even
where the CPU has no native bf16 (it is then emulated and slow, and its MFU is also given
against the fp32 peak, the emulated bf16 peak being meaningless). MFU = training FLOPs per
token of each step's drawn depths (`parcae.model.flops`, ARCHITECTURE §6.1) × tokens/s / the
peak of the same precision (`parcae.perf.peak_flops`: best of three measured windows, or the
data-sheet figure of a known GPU), as on the progress bar of `parcae train`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import add_training_options, apply_threads

from parcae.device import resolve_device
from parcae.model.flops import training_flops_per_token
from parcae.perf import bf16_is_fast, peak_flops
from parcae.train.config import load_config
from parcae.train.loop import train
from parcae.train.metrics import read_metrics
from parcae.train.model import build_model_config

# what a speed measurement does not need: evaluation, samples, TensorBoard, progress bars
QUIET = [
    "eval_every=1000000",
    "checkpoint_every=1000000",
    "final_eval_batches=1",
    "sample_tokens=0",
    "tensorboard=false",
    "progress=false",
]


def measure(precision: str, steps: int, warmup: int, overrides: list[str]) -> dict[str, float]:
    """Tokens/s, MFU and mean step time over steps warmup+1..steps of one short run, and the
    warm-up cost of the first `warmup` steps."""
    with tempfile.TemporaryDirectory(prefix="parcae-speed-") as out_dir:
        config = load_config(
            None,
            [
                *overrides,
                *QUIET,
                f"max_steps={steps}",
                f"precision={precision}",
                f"out_dir={out_dir}",
            ],
        )
        started = time.perf_counter()
        train(config)
        wall = time.perf_counter() - started
        records = [r for r in read_metrics(out_dir) if r.get("kind") == "train"]
    timed = records[warmup:]
    seconds = sum(r["step_time"] for r in timed)
    mean_step = seconds / len(timed)
    tokens_per_step = config.batch_size * config.seq_len
    return {
        "tokens_per_s": tokens_per_step * len(timed) / seconds,
        "mfu": sum(r["mfu"] * r["step_time"] for r in timed) / seconds,
        "step_time": mean_step,
        "warmup": sum(r["step_time"] - mean_step for r in records[:warmup]),
        "wall": wall,
        "tokens_per_step": tokens_per_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per precision")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out")
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"]
    )
    add_training_options(parser, "training config overrides (as for `parcae train`)")
    args = parser.parse_args()
    apply_threads(args)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    config = load_config(None, args.overrides)
    device = resolve_device(config.device)
    print(
        f"{config.model}, batch {config.batch_size} x {config.seq_len} tokens, "
        f"optimizer {config.optimizer}, {device}, {torch.get_num_threads()} threads, "
        f"compile={config.compile}; steps {args.warmup + 1}..{args.steps}"
    )
    for precision in args.precisions:
        result = measure(precision, args.steps, args.warmup, args.overrides)
        utilisation, note = f"MFU {result['mfu']:6.1%}", ""
        if precision == "bf16" and not bf16_is_fast(device):
            # MFU against the emulated bf16 matmul would exceed 100%: compare with fp32's peak
            flops = training_flops_per_token(
                build_model_config(config, config.vocab_size), config.seq_len
            )
            vs_fp32 = result["tokens_per_s"] * flops / peak_flops(torch.float32, device)
            utilisation = f"{vs_fp32:.1%} of the fp32 peak"
            note = f"  (no native bf16 on this {device.type}: emulated; `precision=auto` uses fp32)"
        print(
            f"  {precision}: {result['tokens_per_s']:8,.0f} tokens/s  {utilisation}  "
            f"{result['step_time']:.3f} s/step ({result['tokens_per_step']:,} tokens)  "
            f"warm-up {result['warmup']:.1f} s  run {result['wall']:.0f} s{note}"
        )


if __name__ == "__main__":
    main()
