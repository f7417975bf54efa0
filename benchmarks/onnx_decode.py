"""onnxruntime decode tok/s against PyTorch eager, batch 1, greedy.

A random Parcae of width 256, 2/2/2 layers, vocabulary 8192, context 256 (issue 14's decode
configuration), exported at T = 8 with `parcae export onnx`; a 200-token prompt then 50 new
tokens. Decode tok/s counts the 49 decode steps after the prefill (timed apart); tokens are
checked equal between the two.

    OMP_NUM_THREADS=2 python benchmarks/onnx_decode.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from decode import EDGE  # benchmarks/decode.py: issue 14's edge configuration

import parcae
from parcae.export.onnx import export_onnx
from parcae.export.runtime import OnnxGenerator

T, PROMPT, NEW = 8, 200, 50


def build():
    torch.manual_seed(0)
    model = parcae.create_model("parcae-tiny", **EDGE)
    return model.eval()


@torch.no_grad()
def torch_decode(model, prompt: list[int]) -> tuple[list[int], float, float]:
    cache = model.new_cache(1, PROMPT + NEW, T)
    start = time.perf_counter()
    logits = model(torch.tensor([prompt]), cache=cache, last_only=True).logits
    prefill = time.perf_counter() - start
    tokens = [int(logits[0, -1, : model.config.vocab_size].argmax())]
    start = time.perf_counter()
    for _ in range(NEW - 1):
        logits = model(torch.tensor([[tokens[-1]]]), cache=cache, last_only=True).logits
        tokens.append(int(logits[0, -1, : model.config.vocab_size].argmax()))
    return tokens, prefill, time.perf_counter() - start


def onnx_decode(runtime: OnnxGenerator, prompt: list[int]) -> tuple[list[int], float, float]:
    keys, values = runtime.empty_cache()
    start = time.perf_counter()
    logits, keys, values = runtime.run(prompt, 0, keys, values)
    prefill = time.perf_counter() - start
    tokens = [int(logits[0, -1].argmax())]
    start = time.perf_counter()
    for index in range(NEW - 1):
        logits, keys, values = runtime.run([tokens[-1]], PROMPT + index, keys, values)
        tokens.append(int(logits[0, -1].argmax()))
    return tokens, prefill, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build()
    prompt = torch.randint(0, 8192, (PROMPT,), generator=torch.Generator().manual_seed(1)).tolist()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.onnx"
        start = time.perf_counter()
        export_onnx(model, path, T)
        exported = time.perf_counter() - start
        size = path.stat().st_size
        runtime = OnnxGenerator(path, model.config, T, threads=args.threads)
        results = {}
        for name, run in (
            ("pytorch eager", lambda: torch_decode(model, prompt)),
            ("onnxruntime", lambda: onnx_decode(runtime, prompt)),
        ):
            run()  # warm-up
            best = min((run() for _ in range(args.repeats)), key=lambda r: r[2])
            results[name] = best
    torch_tokens, onnx_tokens = results["pytorch eager"][0], results["onnxruntime"][0]
    print(
        f"width 256, 2/2/2 layers, vocab 8192, T={T}, prompt {PROMPT} + {NEW} new, batch 1, "
        f"{args.threads} threads; export {exported:.1f} s, {size / 2**20:.1f} MiB"
    )
    print(f"{'backend':<14} {'prefill ms':>10} {'decode tok/s':>12}")
    for name, (_, prefill, decode) in results.items():
        print(f"{name:<14} {prefill * 1e3:>10.1f} {(NEW - 1) / decode:>12.1f}")
    ratio = results["pytorch eager"][2] / results["onnxruntime"][2]
    print(f"onnxruntime / eager decode: {ratio:.2f}x; tokens equal: {torch_tokens == onnx_tokens}")


if __name__ == "__main__":
    main()
