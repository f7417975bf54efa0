"""CORE-type task speed: items/s of `parcae.eval.core` on a model at T = 4, batched against one
item at a time.

- batched: `evaluate_task` as `parcae eval` runs it (language modeling: `--batch-size`
  sequences a forward; multiple choice: a group's shared prompt prefixes once through the KV
  cache, then every option's remaining tokens in one forward);
- one at a time: every sequence of every item alone, one forward each (no batching, no shared
  prefix).

Both give the same accuracy (a difference is printed). Tasks: the six BIG-bench tasks of CORE,
converted from `--bigbench DIR` (default ../shared/data/bigbench; `parcae.eval.bigbench`), the
first `--items` items of each. The model is `--model PATH` (a trained run) or a random
`--preset`, with a tokenizer trained on a little Shakespeare.

    python benchmarks/eval_speed.py [--items 40] [--model runs/parcae-tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from parcae.data.tokenizer import Tokenizer
from parcae.eval.bigbench import convert_bigbench
from parcae.eval.bundle import read_task_set
from parcae.eval.core import evaluate_task, prompt_task, score_sequences
from parcae.eval.tasks import load_task
from parcae.infer.loading import load_for_inference
from parcae.model import create_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def model_and_tokenizer(args: argparse.Namespace):
    if args.model:
        return load_for_inference(args.model)
    plays = sorted((SHARED / "shakespeare").glob("*_gut.txt"))[:4]
    tokenizer = Tokenizer.train([p.read_text() for p in plays], vocab_size=4096)
    model = create_model(args.preset, vocab_size=tokenizer.vocab_size).eval()
    return model, tokenizer


def one_at_a_time(model, tokenizer, task, depth: int) -> float:
    """Accuracy, scoring each sequence in a forward of its own."""
    items = prompt_task(task, tokenizer, model.config.context_length)
    correct = 0
    for item in items:
        loss, greedy = score_sequences(model, item.sequences, [depth], 1, tokenizer.pad_id)[depth]
        correct += bool(greedy[0]) if item.gold is None else int(loss.argmin()) == item.gold
    return correct / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a trained model or run directory")
    parser.add_argument("--preset", default="parcae-tiny")
    parser.add_argument("--bigbench", default=str(SHARED / "bigbench"))
    parser.add_argument("--items", type=int, default=40, help="items per task")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = model_and_tokenizer(args)
    bundle = convert_bigbench(Path(args.bigbench), Path(tempfile.mkdtemp()) / "bundle")
    weights = args.model or f"{args.preset} (random weights)"
    print(
        f"{weights}, T = {args.depth}, batch size {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'task':<34}{'items':>6}{'options':>8}{'batched it/s':>14}{'alone it/s':>12}"
        f"{'speed-up':>10}"
    )
    total = {"items": 0, "batched": 0.0, "alone": 0.0}
    for spec in read_task_set(bundle, "bigbench"):
        task = load_task(spec, args.items)
        options = sum(len(o) for o in map(_options, task.items)) / len(task.items)
        start = time.perf_counter()
        [batched] = evaluate_task(
            model, tokenizer, task, [args.depth], args.batch_size, progress=False
        )
        batched_seconds = time.perf_counter() - start
        start = time.perf_counter()
        alone = one_at_a_time(model, tokenizer, task, args.depth)
        alone_seconds = time.perf_counter() - start
        if abs(alone - batched.accuracy) > 1e-9:  # only a near-tie can differ
            print(f"  {spec.label}: accuracy {batched.accuracy} batched, {alone} alone")
        n = len(task.items)
        total["items"] += n
        total["batched"] += batched_seconds
        total["alone"] += alone_seconds
        print(
            f"{spec.label:<34}{n:>6}{options:>8.1f}{n / batched_seconds:>14.2f}"
            f"{n / alone_seconds:>12.2f}{alone_seconds / batched_seconds:>9.1f}x"
        )
    print(
        f"{'all':<34}{total['items']:>6}{'':>8}{total['items'] / total['batched']:>14.2f}"
        f"{total['items'] / total['alone']:>12.2f}{total['alone'] / total['batched']:>9.1f}x"
    )


def _options(item) -> tuple:
    return getattr(item, "choices", None) or getattr(item, "context_options", None) or (None,)


if __name__ == "__main__":
    main()
