"""Load on `parcae serve`: `parcae.generate` alone, a lone request, then N concurrent streamed
greedy completions with the `openai` async client, on loopback.

Starts `parcae serve --max-batch B` as a subprocess on 127.0.0.1 (a free port) for `--model`
(any saved model or run directory), or, without `--model`, for a tiny random Parcae and a small
tokenizer written to a temporary directory (nothing is trained). Prompts are 8 to 32 token ids,
each continued by `--max-tokens` tokens at temperature 0. Phases, in order:

1. generate alone: `parcae.generate` in this process on the first `--lone` prompts, one at a time
   (tokens/s);
2. lone request: the same prompts sent one at a time to the server (what a quiet server gives
   one user: free rows must cost nothing);
3. concurrent: all `--requests` prompts sent at once.

For 2 and 3: successes, p50/p95 latency and time to first token (TTFT), aggregate generated
tokens/s (completion tokens over wall time); then both as multiples of generate alone, and
whether the lone phase's texts equal the concurrent phase's. Every request and each phase are
bounded in time (`--timeout`). `--rounds N` runs the three phases N times in turn against one
server and ends with the median of each figure over the rounds (a 2-core machine's speed
drifts by tens of percent within minutes); on a shared machine, also alternate with the code
it is compared to.

    python benchmarks/serve_load.py [--model PATH] [--requests 64] [--max-tokens 32]
        [--max-batch 32] [--lone 8] [--rounds 1] [--compile] [--engine process|thread]
        [--threads N] [--timeout 600]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tiny_model_dir(directory: Path) -> Path:
    """A tiny random Parcae (context 128) and a tokenizer trained on a sentence, saved."""
    import torch

    import parcae
    from parcae.data.tokenizer import Tokenizer

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 50
    tokenizer = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(0)
    model = parcae.create_model(
        "parcae-tiny", vocab_size=300, d_model=64, n_heads=2, ffn_dim=128, context_length=128
    )
    with torch.no_grad():  # identity-init blocks would make every token's keys alike
        for name, parameter in model.named_parameters():
            if name.endswith(("c_proj.weight", "mlp.proj.weight")):
                parameter.normal_(std=0.05)
    path = directory / "parcae-tiny-random"
    model.eval().save_pretrained(path)
    tokenizer.save(path)
    return path


def start_server(
    model: Path, max_batch: int, max_queue: int, extra: list[str]
) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "parcae",
        "serve",
        "--model",
        str(model),
        "--port",
        "0",
        "--max-batch",
        str(max_batch),
        "--max-queue",
        str(max_queue),
        "--log-level",
        "warning",
        *extra,
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    wait = 3600 if "--compile" in extra else 120  # a compiled server compiles before it serves
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise SystemExit(f"parcae serve exited: {process.wait()}")
        if line.startswith("parcae: compiled"):
            print(line, end="", file=sys.stderr, flush=True)
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if match:
            return process, match.group(1)
    raise SystemExit(f"parcae serve did not start in {wait} s")


async def one(client, model: str, prompt: list[int], max_tokens: int, timeout: float):
    """(ok, latency, time to first token, completion tokens, text) of one streamed request."""
    start = time.perf_counter()
    first, text, tokens = None, "", 0

    async def consume() -> None:
        nonlocal first, text, tokens
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                first = first or time.perf_counter()
                text += chunk.choices[0].text
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens

    try:
        await asyncio.wait_for(consume(), timeout)
    except Exception as error:  # noqa: BLE001 - counted as a failure and reported
        return False, time.perf_counter() - start, None, 0, f"{type(error).__name__}: {error}"
    end = time.perf_counter()
    return True, end - start, (first or end) - start, tokens, text


async def run(url: str, model: str, prompts, max_tokens: int, concurrency: int, timeout: float):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=timeout)
    gate = asyncio.Semaphore(concurrency)

    async def gated(prompt):
        async with gate:
            return await one(client, model, prompt, max_tokens, timeout)

    start = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(gated(p) for p in prompts)), timeout=timeout)
    wall = time.perf_counter() - start
    await client.close()
    return results, wall


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def report(name: str, results, wall: float) -> dict[str, float]:
    """Print one phase's line; its tokens/s and TTFT p50."""
    ok = [r for r in results if r[0]]
    latencies = [r[1] for r in ok]
    ttfts = [r[2] for r in ok]
    tokens = sum(r[3] for r in ok)
    rate = tokens / wall
    print(
        f"{name:>14}: {len(ok)}/{len(results)} ok in {wall:6.2f} s | latency p50 "
        f"{percentile(latencies, 50):6.3f} s p95 {percentile(latencies, 95):6.3f} s | TTFT p50 "
        f"{percentile(ttfts, 50):6.3f} s p95 {percentile(ttfts, 95):6.3f} s | "
        f"{tokens} tokens, {rate:7.1f} tokens/s"
    )
    for failure in [r for r in results if not r[0]][:3]:
        print(f"{'':>16}failure: {failure[4]}")
    return {"rate": rate, "ttft": percentile(ttfts, 50)}


def generate_alone(model, prompts, max_tokens: int) -> float:
    """Tokens/s of `parcae.generate` in this process, greedy, one prompt at a time (one
    throwaway call first)."""
    import torch

    import parcae

    with torch.no_grad():
        parcae.generate(model, prompts[0], max_tokens, temperature=0)
        start, tokens = time.perf_counter(), 0
        for prompt in prompts:
            out = parcae.generate(model, prompt, max_tokens, temperature=0)
            tokens += out.shape[1] - len(prompt)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a saved model or run directory")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--lone", type=int, default=8, help="requests of the lone phases")
    parser.add_argument("--rounds", type=int, default=1, help="times to run the three phases")
    parser.add_argument("--timeout", type=float, default=600, help="bound on each phase, s")
    parser.add_argument("--compile", action="store_true", help="parcae serve --compile")
    parser.add_argument(
        "--engine", choices=("process", "thread"), default=None, help="parcae serve --engine"
    )
    parser.add_argument("--threads", type=int, default=None, help="parcae serve --threads")
    args = parser.parse_args()
    if not 1 <= args.requests <= 1000:
        raise SystemExit("--requests must be in [1, 1000]")
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    rng = random.Random(0)
    prompts = [
        [rng.randrange(3, 256) for _ in range(rng.randint(8, 32))] for _ in range(args.requests)
    ]
    lone = prompts[: args.lone]
    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or tiny_model_dir(Path(scratch))
        from parcae.infer.loading import load_for_inference

        model, _ = load_for_inference(str(model_dir))
        extra = ["--compile"] if args.compile else []
        extra += ["--engine", args.engine] if args.engine else []
        extra += ["--threads", str(args.threads)] if args.threads else []
        process, url = start_server(model_dir, args.max_batch, args.requests, extra)
        try:
            import httpx

            name = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
            print(
                f"{args.requests} streamed greedy completions of {args.max_tokens} tokens, "
                f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), {model_dir}; "
                f"server --max-batch {args.max_batch}{' --compile' if args.compile else ''}"
            )
            asyncio.run(run(url, name, lone[:1], args.max_tokens, 1, args.timeout))  # warm-up
            for index in range(args.rounds):
                print(f"round {index + 1}/{args.rounds}")
                alone = generate_alone(model, lone, args.max_tokens)
                serial, serial_wall = asyncio.run(
                    run(url, name, lone, args.max_tokens, 1, args.timeout)
                )
                batched, batched_wall = asyncio.run(
                    run(url, name, prompts, args.max_tokens, args.requests, args.timeout)
                )
                rounds.append(summarise(alone, lone, serial, serial_wall, batched, batched_wall))
        finally:
            process.terminate()
            process.wait(timeout=30)
    if args.rounds > 1:
        medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        print(
            f"median of {args.rounds} rounds: "
            + ", ".join(f"{key} {value:.3g}" for key, value in medians.items())
        )


def summarise(alone, lone, serial, serial_wall, batched, batched_wall) -> dict[str, float]:
    """Print one round's lines; its figures."""
    print(f"{'generate alone':>14}: {alone:7.1f} tokens/s (parcae.generate, {len(lone)} prompts)")
    slow = report("lone request", serial, serial_wall)
    fast = report("concurrent", batched, batched_wall)
    same = sum(a[0] and b[0] and a[4] == b[4] for a, b in zip(batched, serial))
    print(
        f"lone request / generate alone: {slow['rate'] / alone:.2f}x; "
        f"concurrent / generate alone: {fast['rate'] / alone:.2f}x aggregate tokens/s"
    )
    print(f"identical texts lone and concurrent: {same}/{len(serial)}")
    return {
        "generate_tok_s": alone,
        "lone_ratio": slow["rate"] / alone,
        "concurrent_ratio": fast["rate"] / alone,
        "concurrent_tok_s": fast["rate"],
        "ttft_p50_s": fast["ttft"],
    }


if __name__ == "__main__":
    main()
