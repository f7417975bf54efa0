"""Decoding benchmark: prefill and decode tokens/s with and without the KV cache, the cache's
memory per sharing strategy, and (given a trained model) what each strategy and adaptive depth
cost in loss.

Speed (random weights; greedy; batch 1): prefill tokens/s = P / time(prompt -> first token);
decode tokens/s = (N - 1) / (time(N new tokens) - time(1 new token)). The uncached baseline
recomputes the whole sequence for every new token (`use_cache=False`); with
`--uncached-tokens` it generates fewer tokens and reports the rate over those. Rates are given
by the wall clock and by process CPU time: on a shared machine, run with `--threads 1` and read
the CPU column (the time the work takes when it has a core to itself).

Quality (`--model PATH --data-dir DIR`): on rows of the validation split, teacher-forced
- sharing: prefill the first `--prefill` tokens, then feed the rest one by one through the cache
  with each strategy; mean loss on the fed tokens (`full` equals the uncached forward);
- adaptive depth: one cached pass per exit criterion (residual, kl) and threshold eps with at
  most `--max-steps` loop steps per token; mean loop steps per token and loss, against fixed
  T = 1 .. max.

    python benchmarks/decode.py [--presets parcae-tiny parcae-140m] [--prompt-tokens 200]
    python benchmarks/decode.py --presets --model runs/parcae-tiny \
        --data-dir ~/.cache/parcae/prepared/shakespeare-v4096

Edge decode (`--edge`, issue 14): a random Parcae of width 256, 2/2/2 layers, vocabulary 8192,
T = 8, fp32; a 200-token prompt + 50 new tokens, greedy, batch 1 and 8. Prints prefill ms and
decode tok/s (49 decode steps: time(50 new) - time(1 new)) for eager and compiled generation
(`generate(..., compile=True)`; compile time apart), and the ratio to a matmul-bound estimate
(FLOPs per token from `parcae.model.flops` over the measured fp32 matmul peak). The official
implementation is timed beside ours by `benchmarks/official_decode.py`.

    OMP_NUM_THREADS=2 python benchmarks/decode.py --edge --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from parcae.infer import exit_rule, generate
from parcae.model import create_model

STRATEGIES = ("full", "last:4", "last:2", "ring:2", "shared")
EPSILONS = {  # exit criterion -> thresholds swept
    "residual": (0.0, 0.003, 0.01, 0.03, 0.1, 0.3),
    "kl": (0.0, 1e-4, 1e-3, 1e-2, 0.1),
}


def timed(function, repeats: int = 1) -> Seconds:
    """Best wall and process CPU time of `repeats` calls."""
    best = Seconds(float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        best = Seconds(
            min(best.wall, time.perf_counter() - wall), min(best.cpu, time.process_time() - cpu)
        )
    return best


@dataclass(frozen=True)
class Seconds:
    """Wall-clock and process CPU seconds. On a shared machine with one thread, the CPU time
    is the time the work would take alone (the wall time includes waiting for a core)."""

    wall: float
    cpu: float

    def __sub__(self, other: Seconds) -> Seconds:
        return Seconds(self.wall - other.wall, self.cpu - other.cpu)


def rate(count: int, seconds: Seconds) -> str:
    """`count` per second by the wall clock and by CPU time, as a table cell."""
    return f"{count / seconds.wall:10.1f} {count / seconds.cpu:10.1f}"


def bench_speed(preset: str, args: argparse.Namespace) -> None:
    length = args.prompt_tokens + args.new_tokens
    torch.manual_seed(0)
    model = create_model(preset)
    if model.config.context_length < length:  # parcae-tiny's context is 256 tokens
        model = create_model(preset, context_length=length)
    model.eval()
    config = model.config
    steps = (args.num_steps or config.default_depth) if config.is_looped else 0
    params = model.num_params() / 1e6
    prompt = torch.randint(
        config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    )
    generate(model, prompt[:, :8], 2, temperature=0)  # warm up

    def run(new_tokens: int, **options) -> Seconds:
        return timed(
            lambda: generate(
                model, prompt, new_tokens, num_steps=steps or None, temperature=0, **options
            ),
            args.repeats,
        )

    prefill = run(1)
    print(
        f"\n{preset} ({params:.1f}M parameters, T = {steps or '-'}, {torch.get_num_threads()} "
        f"threads): prompt {args.prompt_tokens}, {args.new_tokens} new tokens"
    )
    print(f"  {'tokens/s':<20} {'wall':>10} {'cpu':>10}")
    print(f"  prefill              {rate(args.prompt_tokens, prefill)}")
    cached = run(args.new_tokens)
    print(f"  decode, cached       {rate(args.new_tokens - 1, cached - prefill)}")
    uncached_tokens = min(args.uncached_tokens or args.new_tokens, args.new_tokens)
    if uncached_tokens > 1:
        uncached = run(uncached_tokens, use_cache=False)
        print(
            f"  decode, uncached     {rate(uncached_tokens - 1, uncached - prefill)} "
            f"(over {uncached_tokens} new tokens)"
        )
    if not config.is_looped:
        cache = model.new_cache(1, length)
        print(f"  cache memory         {cache.nbytes / 2**20:10.2f} MiB")
        return
    print(
        f"  {'sharing':<10} {'cache MiB':>10} {'vs full':>8}"
        + (f" {'decode tok/s wall, cpu':>22}" if args.strategy_speed else "")
    )
    full_bytes = model.new_cache(1, length, steps, "full").nbytes
    for strategy in STRATEGIES:
        nbytes = model.new_cache(1, length, steps, strategy).nbytes
        line = f"  {strategy:<10} {nbytes / 2**20:10.2f} {nbytes / full_bytes:8.2f}"
        if args.strategy_speed:
            seconds = run(args.new_tokens, cache_sharing=strategy)
            line += f" {rate(args.new_tokens - 1, seconds - prefill)}"
        print(line)


EDGE = dict(
    d_model=256,
    n_heads=4,
    ffn_dim=1024,
    vocab_size=8192,
    context_length=256,
    n_prelude=2,
    n_core=2,
    n_coda=2,
)


def bench_edge(args: argparse.Namespace) -> None:
    import inspect

    from parcae.model.flops import forward_flops_per_token
    from parcae.perf import peak_flops

    steps, prompt_len, new = args.num_steps or 8, args.prompt_tokens, args.new_tokens
    torch.manual_seed(0)
    model = create_model("parcae-tiny", **EDGE).eval()
    config = model.config
    flops = forward_flops_per_token(config, prompt_len + new // 2, steps)
    peak = peak_flops(torch.float32, "cpu")
    bound = peak / flops
    print(
        f"\nedge decode: width {config.d_model}, {config.n_prelude}/{config.n_core}/"
        f"{config.n_coda} layers, vocab {config.vocab_size}, T = {steps}, fp32, "
        f"{torch.get_num_threads()} threads; prompt {prompt_len} + {new} new, greedy"
    )
    print(
        f"  {flops / 1e6:.1f} MFLOP/token, fp32 matmul peak {peak / 1e9:.0f} GFLOP/s: "
        f"matmul-bound estimate {bound:.0f} tok/s"
    )
    modes = ["eager"]
    if "compile" in inspect.signature(generate).parameters:
        modes.append("compiled")
    print(
        f"  {'implementation':<16} {'batch':>5} {'prefill ms':>10} {'decode tok/s':>12} "
        f"{'row tok/s':>9} {'of bound':>8} {'compile s':>9}"
    )
    reference = {}
    for batch in args.edge_batches:
        prompt = torch.randint(
            config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1)
        )
        for mode in modes:
            options = {"compile": True} if mode == "compiled" else {}

            def run(count: int, options=options, prompt=prompt):
                return generate(model, prompt, count, num_steps=steps, temperature=0, **options)

            start = time.perf_counter()
            tokens = run(new)  # warm-up (and compilation)
            first = time.perf_counter() - start
            prefill = timed(lambda: run(1), args.repeats)
            total = timed(lambda: run(new), args.repeats)
            decode = total - prefill
            compile_s = f"{first - total.wall:9.1f}" if mode == "compiled" else f"{'-':>9}"
            rate_ = (new - 1) / decode.wall
            print(
                f"  {'ours ' + mode:<16} {batch:>5} {prefill.wall * 1e3:>10.1f} "
                f"{rate_ * batch:>12.1f} {rate_:>9.1f} {rate_ / bound:>8.1%} {compile_s}"
            )
            if mode == "eager":
                reference[batch] = tokens
            elif not torch.equal(tokens, reference[batch]):
                print("  WARNING: compiled tokens differ from eager")
    print("  the official implementation: benchmarks/official_decode.py --official PATH")


def validation_rows(data_dir: str, rows: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    from parcae.data.loader import iter_eval_batches

    batch = next(iter_eval_batches(data_dir, "val", rows, seq_len, max_batches=1))
    return batch.inputs, batch.targets


def mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()))


@torch.no_grad()
def teacher_forced_loss(model, inputs, targets, steps: int, sharing: str, prefill: int) -> float:
    """Mean loss on tokens prefill.. fed one at a time through a cache with `sharing`."""
    batch, seq = inputs.shape
    cache = model.new_cache(batch, seq, steps, sharing)
    model(inputs[:, :prefill], cache=cache)
    logits = [model(inputs[:, i : i + 1], cache=cache).logits for i in range(prefill, seq)]
    return mean_loss(torch.cat(logits, dim=1), targets[:, prefill:])


@torch.no_grad()
def depth_pass(
    model, inputs, targets, steps: int, eps: float | None, criterion: str = "residual"
) -> tuple[torch.Tensor, float]:
    """(loop steps of each token, mean loss) of one cached pass with at most `steps` steps."""
    batch, seq = inputs.shape
    out = model(
        inputs,
        cache=model.new_cache(batch, seq, steps),
        exit_rule=exit_rule(eps, criterion, model.config.vocab_size),
    )
    return out.loop.steps, mean_loss(out.logits, targets)


@torch.no_grad()
def bench_quality(args: argparse.Namespace) -> None:
    from parcae.infer.loading import load_for_inference

    model, _ = load_for_inference(args.model)
    if not model.config.is_looped:
        raise SystemExit("--model must be a Parcae model (a GPT has no loop)")
    seq_len = min(args.seq_len, model.config.context_length)
    inputs, targets = validation_rows(args.data_dir, args.rows, seq_len)
    steps = args.num_steps or model.config.mean_recurrence
    tokens = inputs.numel()
    print(f"\nquality: {args.model}, {inputs.shape[0]} validation rows x {seq_len} tokens")
    print(f"  sharing (T = {steps}; prefill {args.prefill}, then one token at a time)")
    reference = mean_loss(
        model(inputs, num_steps=steps).logits[:, args.prefill :], targets[:, args.prefill :]
    )
    print(f"  {'uncached forward':<16} loss {reference:.5f}")
    for strategy in STRATEGIES:
        loss = teacher_forced_loss(model, inputs, targets, steps, strategy, args.prefill)
        print(f"  {strategy:<16} loss {loss:.5f}  ({loss - reference:+.5f})")
    print(f"  depth ({tokens} tokens)")
    for fixed in range(1, args.max_steps + 1):
        _, loss = depth_pass(model, inputs, targets, fixed, None)
        print(f"  fixed T = {fixed:<2}          steps {fixed:5.2f}  loss {loss:.5f}")
    for criterion, epsilons in EPSILONS.items():
        for eps in epsilons:
            steps, loss = depth_pass(model, inputs, targets, args.max_steps, eps, criterion)
            exits = torch.bincount(steps.flatten(), minlength=args.max_steps + 1)[1:].tolist()
            print(
                f"  {criterion:<8} eps = {eps:<6} steps {steps.float().mean():5.2f}  loss "
                f"{loss:.5f}  (tokens exiting at steps 1..{args.max_steps}: {exits})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["parcae-tiny", "parcae-140m"])
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument(
        "--uncached-tokens",
        type=int,
        default=None,
        help="new tokens for the uncached baseline (default: --new-tokens)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument(
        "--strategy-speed",
        action="store_true",
        help="also time decoding with each cache-sharing strategy",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", help="a trained Parcae (run or model directory) for quality")
    parser.add_argument("--data-dir", help="prepared data directory with a val split")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prefill", type=int, default=32)
    parser.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="loop steps T for speed and sharing (default: mean_recurrence)",
    )
    parser.add_argument("--max-steps", type=int, default=8, help="the most loop steps (depth)")
    parser.add_argument("--edge", action="store_true", help="the issue-14 edge decode table only")
    parser.add_argument("--edge-batches", type=int, nargs="*", default=[1, 8])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.edge:
        if args.new_tokens == 100:
            args.new_tokens = 50
        bench_edge(args)
        return
    for preset in args.presets:
        bench_speed(preset, args)
    if args.model:
        if not args.data_dir:
            parser.error("--model needs --data-dir")
        bench_quality(args)


if __name__ == "__main__":
    main()
