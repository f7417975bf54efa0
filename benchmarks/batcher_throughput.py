"""Continuous-batching throughput: N concurrent greedy requests of M new tokens each on a tiny
random Parcae, served by `ContinuousBatcher` (max_batch = N) against the same requests one at
a time (`parcae.generate`, and the batcher with max_batch = 1). Checks that every request's
tokens are the same all three ways, and prints aggregate tokens/s.

    python benchmarks/batcher_throughput.py [--requests 16] [--new-tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import parcae
from parcae.infer.sampling import SamplingParams
from parcae.serve import ContinuousBatcher, GenerationRequest


def tiny_model(context_length: int):
    torch.manual_seed(0)
    model = parcae.create_model(
        "parcae-tiny",
        vocab_size=300,
        d_model=64,
        n_heads=2,
        ffn_dim=128,
        context_length=context_length,
    )
    with torch.no_grad():  # identity-init blocks would make every token's keys alike
        for name, parameter in model.named_parameters():
            if name.endswith(("c_proj.weight", "mlp.proj.weight")):
                parameter.normal_(std=0.05)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = tiny_model(context_length=args.new_tokens + 64)
    rng = random.Random(0)
    requests = [
        GenerationRequest(
            [rng.randrange(300) for _ in range(rng.randint(4, 32))],
            SamplingParams(max_new_tokens=args.new_tokens, temperature=0),
        )
        for _ in range(args.requests)
    ]
    total = args.requests * args.new_tokens

    def batched(max_batch: int) -> tuple[list[list[int]], float]:
        batcher = ContinuousBatcher(model, max_batch=max_batch, max_queue=len(requests))
        start = time.perf_counter()
        handles = [batcher.submit(request) for request in requests]
        batcher.run_until_idle()
        elapsed = time.perf_counter() - start
        return [handle.result(0).token_ids for handle in handles], elapsed

    start = time.perf_counter()
    alone = [
        parcae.generate(model, [r.prompt_ids], r.max_tokens, temperature=0)[
            0, len(r.prompt_ids) :
        ].tolist()
        for r in requests
    ]
    t_generate = time.perf_counter() - start
    tokens_one, t_one = batched(1)
    tokens_all, t_all = batched(args.requests)
    assert tokens_all == alone == tokens_one, "batched tokens differ from generate"
    print(f"{args.requests} requests x {args.new_tokens} new tokens, greedy, identical tokens")
    print(f"one at a time, parcae.generate:   {total / t_generate:8.1f} tok/s")
    print(f"one at a time, max_batch=1:       {total / t_one:8.1f} tok/s")
    print(
        f"continuous batching, max_batch={args.requests}: {total / t_all:8.1f} tok/s "
        f"(x{t_generate / t_all:.1f})"
    )


if __name__ == "__main__":
    main()
