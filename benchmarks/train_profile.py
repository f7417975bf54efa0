"""Where a training step's time goes: the top operators of `torch.profiler` over a few steps of
the real training step (depth plan, forward, backward, clipping, MuonAdamW).

    python benchmarks/train_profile.py [--steps 3] [--warmup 2] [--top 25] [key=value ...]

Builds the run's components as `parcae train` does (same config keys and overrides), runs
`--warmup` steps unprofiled (kernel and compile warm-up), then profiles `--steps` steps and
prints the operators sorted by self CPU time, and the step phases (forward_backward, optimizer)
as labelled ranges. `--trace PATH` also writes a Chrome trace.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import add_training_options, apply_threads
from torch.profiler import ProfilerActivity, profile, record_function

from parcae.device import resolve_device
from parcae.perf import keep_freed_memory
from parcae.train import distributed as dist
from parcae.train.config import load_config
from parcae.train.data import TrainData
from parcae.train.model import TrainModel
from parcae.train.optimizer import Optimizer
from parcae.train.step import depth_plan, forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="profiled optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--trace", default=None, help="write a Chrome trace here")
    add_training_options(parser, "training config overrides (as for `parcae train`)")
    args = parser.parse_args()
    apply_threads(args)

    with tempfile.TemporaryDirectory(prefix="parcae-profile-") as out_dir:
        config = load_config(None, [*args.overrides, "progress=false", f"out_dir={out_dir}"])
        device = resolve_device(config.device)
        if device.type == "cpu":
            keep_freed_memory()  # as `parcae train` does
        info = dist.setup(device.type)
        data = TrainData.build(config, info, progress=False)
        model = TrainModel.build(config, data.tokenizer.vocab_size, device, info)
        optimizer = Optimizer.build(config, model, args.warmup + args.steps)

        def train_step(step: int) -> None:
            optimizer.schedule(step)
            with record_function("forward_backward"):
                forward_backward(model, data, depth_plan(model, config, step))
            with record_function("optimizer"):
                optimizer.step()

        started = time.perf_counter()
        for step in range(args.warmup):
            train_step(step)
        print(f"{config.model} ({model.dtype}), warm-up {time.perf_counter() - started:.1f} s")
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for step in range(args.warmup, args.warmup + args.steps):
                train_step(step)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=48))
        if args.trace:
            prof.export_chrome_trace(args.trace)
        dist.teardown(info)


if __name__ == "__main__":
    main()
