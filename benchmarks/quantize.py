"""fp32 against weight-only int8 and int4 (`parcae quantize`, torchao): bytes on disk, bytes in
memory, bpb at T = 1, 2, 4, μ_rec, and greedy decode tokens/s.

- bytes on disk: `model.safetensors` as saved (fp32: `save_pretrained`; int8 / int4: the
  quantized format, `parcae.quant.schemes`);
- bytes in memory: every parameter and buffer of the loaded model, a quantized matrix counted as
  its inner tensors (values, scales, zero points), a tied matrix once;
- bpb: `parcae eval --tasks bpb` on the validation split of `--data DIR` (skipped without it);
- decode: batch 1, a `--prompt-tokens` prompt (random ids) then `--new-tokens` greedy tokens at
  T = μ_rec through the KV cache, the best of `--repeats` timed runs after one warm-up.

The model is `--model PATH` (a run or model directory) or, by default, a random Parcae of the
decode benchmark's shape (width 256, 2/2/2 layers, vocabulary 8192, T = 8).

    python benchmarks/quantize.py [--model runs/tiny] [--data DIR] [--group-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from decode import EDGE  # benchmarks/decode.py: issue 14's edge configuration

import parcae
from parcae.eval.run import EvalRequest, run_eval
from parcae.infer.generate import generate
from parcae.infer.loading import resolve_model_dir
from parcae.quant.schemes import check_scheme, import_torchao, quantize_model

SCHEMES = ("fp32", "int8", "int4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="run or model directory (default: random)")
    parser.add_argument("--data", default=None, help="prepared data directory for bpb")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--bpb-batches", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=None, help="bpb row length")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def source_model(args: argparse.Namespace, directory: Path) -> Path:
    """The fp32 model directory: `--model`'s, or a random model saved into `directory`."""
    if args.model:
        return resolve_model_dir(args.model)
    torch.manual_seed(0)
    model = parcae.create_model("parcae-tiny", **dict(EDGE, context_length=512, mean_recurrence=8))
    path = directory / "fp32"
    model.save_pretrained(path)
    return path


def memory_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers, a quantized tensor as its inner tensors, shared tensors once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            total += sum(
                getattr(tensor, n).numel() * getattr(tensor, n).element_size() for n in names
            )
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def decode_tokens_per_second(model, args: argparse.Namespace) -> float:
    vocab = model.config.vocab_size
    prompt = torch.randint(
        0, vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    )
    run = lambda: generate(model, prompt, args.new_tokens, temperature=0.0)  # noqa: E731
    run()  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return args.new_tokens / best


def bpb(path: Path, args: argparse.Namespace, depths: list[int], out: Path) -> dict[str, float]:
    request = EvalRequest(
        model=str(path),
        tasks="bpb",
        depths=depths,
        out=str(out),
        data=args.data,
        bpb_batches=args.bpb_batches,
        seq_len=args.seq_len,
        batch_size=8,
        progress=False,
    )
    return run_eval(request)["bpb"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import_torchao("benchmarks/quantize.py")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"fp32": source_model(args, tmp)}
        fp32 = parcae.from_pretrained(paths["fp32"])
        config = fp32.config
        depths = sorted({1, 2, 4, config.mean_recurrence}) if config.is_looped else [1]
        for scheme in ("int8", "int4"):
            model = parcae.from_pretrained(paths["fp32"])
            quantize_model(model, check_scheme(scheme, args.group_size))
            paths[scheme] = tmp / scheme
            model.save_pretrained(paths[scheme])
        for scheme in SCHEMES:
            model = parcae.from_pretrained(paths[scheme])
            row = {
                "scheme": scheme,
                "disk_bytes": (paths[scheme] / "model.safetensors").stat().st_size,
                "memory_bytes": memory_bytes(model),
                "decode_tok_s": decode_tokens_per_second(model, args),
            }
            if args.data:
                row["bpb"] = bpb(paths[scheme], args, depths, tmp / f"{scheme}.json")
            rows.append(row)
            print(f"{scheme}: done", file=sys.stderr)
    print_table(rows, depths, config, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def print_table(rows: list[dict], depths: list[int], config, args: argparse.Namespace) -> None:
    print(
        f"model: {args.model or 'random parcae'} (d={config.d_model}, "
        f"vocab {config.vocab_size}, μ_rec {config.mean_recurrence}); group size "
        f"{args.group_size}; decode: batch 1, {args.prompt_tokens}-token prompt + "
        f"{args.new_tokens} greedy tokens at T = μ_rec, {torch.get_num_threads()} threads"
    )
    header = f"{'scheme':<7}{'disk MB':>9}{'×fp32':>7}{'memory MB':>11}{'×fp32':>7}{'tok/s':>8}"
    if "bpb" in rows[0]:
        header += "".join(f"{'bpb T=' + str(d):>11}" for d in depths)
    print(header)
    print("-" * len(header))
    base = rows[0]
    for row in rows:
        line = (
            f"{row['scheme']:<7}{row['disk_bytes'] / 1e6:>9.2f}"
            f"{row['disk_bytes'] / base['disk_bytes']:>7.2f}"
            f"{row['memory_bytes'] / 1e6:>11.2f}"
            f"{row['memory_bytes'] / base['memory_bytes']:>7.2f}{row['decode_tok_s']:>8.1f}"
        )
        if "bpb" in row:
            line += "".join(f"{row['bpb'][str(d)]:>11.4f}" for d in depths)
        print(line)


if __name__ == "__main__":
    sys.exit(main())
