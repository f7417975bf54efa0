"""The memory–quality frontier: a looped Parcae against a fixed-depth GPT of about equal size,
each in fp32 / int8 / int4 (`parcae quantize`): validation bpb against bytes in memory.

For each model × scheme: bytes in memory (parameters + buffers of the loaded model, a quantized
matrix counted as its real inner tensors), bytes on disk (`model.safetensors`), validation bpb
(`parcae eval --tasks bpb`; the Parcae at T = 1, 2, 4 and μ_rec, the GPT at its own depth) and
greedy decode tokens/s (batch 1, `--prompt-tokens` prompt + `--new-tokens` greedy tokens, the
Parcae at μ_rec, best of `--repeats` after a warm-up). The measuring helpers are those of
`benchmarks/quantize.py`.

Writes `frontier.json` and `frontier.md` into `--out-dir` and the plot to `--figure`.

    python benchmarks/frontier.py --parcae runs/.../parcae_... --gpt runs/.../gpt_... \\
        --data ~/.cache/parcae/prepared/shakespeare-v4096

The two models come from training runs, e.g. the S2 reproduction
(`python -m experiments.run --study S2`), or:

    parcae train --model parcae-tiny --data shakespeare --vocab-size 4096 --max-steps 600 \\
        --out-dir runs/frontier/parcae  (and the same with --model gpt-tiny)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

# benchmarks/ is sys.path[0] when this file is run as a script.
from quantize import SCHEMES, bpb, decode_tokens_per_second, memory_bytes

import parcae
from parcae.infer.loading import resolve_model_dir
from parcae.quant.schemes import check_scheme, import_torchao, quantize_model

OFFSET = {"fp32": (5, 4), "int8": (5, 4), "int4": (5, -11)}

HOW_TO = """\
frontier.py needs two trained models of about equal size: --parcae PATH (a looped Parcae) and
--gpt PATH (a fixed-depth GPT), run or model directories, and --data DIR (their prepared data).
Make them with the S2 reproduction (python -m experiments.run --study S2, then
runs/reproduce/S2/{parcae,gpt}_...), or train them directly, e.g.:
    parcae train --model parcae-tiny --data shakespeare --vocab-size 4096 --max-steps 600 ...
    parcae train --model gpt-tiny    --data shakespeare --vocab-size 4096 --max-steps 600 ...
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcae", default=None, help="looped Parcae: run or model directory")
    parser.add_argument("--gpt", default=None, help="fixed-depth GPT: run or model directory")
    parser.add_argument("--data", default=None, help="prepared data directory (val split)")
    parser.add_argument("--out-dir", default="docs/results/edge")
    parser.add_argument("--figure", default="docs/figures/edge-frontier.png")
    parser.add_argument("--bpb-batches", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def measure(name: str, source: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """One row per scheme for the model at `source`."""
    fp32_dir = resolve_model_dir(source)
    fp32 = parcae.from_pretrained(fp32_dir)
    config = fp32.config
    parameters = sum(p.numel() for p in fp32.parameters())
    looped = bool(config.is_looped)
    depths = sorted({1, 2, 4, config.mean_recurrence}) if looped else [1]
    paths = {"fp32": fp32_dir}
    for scheme in SCHEMES[1:]:
        model = parcae.from_pretrained(fp32_dir)
        quantize_model(model, check_scheme(scheme, args.group_size))
        paths[scheme] = tmp / name / scheme
        model.save_pretrained(paths[scheme])
    rows = []
    for scheme in SCHEMES:
        model = parcae.from_pretrained(paths[scheme])
        model.eval()
        row = {
            "model": name,
            "family": "parcae" if looped else "gpt",
            "source": str(source),
            "scheme": scheme,
            "parameters": parameters,
            "mean_recurrence": config.mean_recurrence if looped else None,
            "memory_bytes": memory_bytes(model),
            "disk_bytes": (paths[scheme] / "model.safetensors").stat().st_size,
            "decode_tok_s": decode_tokens_per_second(model, args),
        }
        values = bpb(paths[scheme], args, depths, tmp / f"{name}-{scheme}.json")
        if looped:
            row["bpb"] = {str(d): values[str(d)] for d in depths}
            row["bpb"]["mu_rec"] = values[str(config.mean_recurrence)]
        else:
            (value,) = values.values()
            row["bpb"] = {"fixed": value}
        rows.append(row)
        print(f"{name} {scheme}: {row['bpb']} {row['decode_tok_s']:.1f} tok/s", file=sys.stderr)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    keys = ["1", "2", "4", "mu_rec", "fixed"]
    heads = ["bpb T=1", "bpb T=2", "bpb T=4", "bpb μ_rec", "bpb (GPT)"]
    lines = [
        "# Memory–quality frontier: looped Parcae vs fixed-depth GPT",
        "",
        f"Parcae: `{args.parcae}`; GPT: `{args.gpt}`; data: `{args.data}` (val split, "
        f"{args.bpb_batches} batches × 8 rows × {args.seq_len} tokens). Weight-only int8/int4 "
        f"with group size {args.group_size} (`parcae quantize`). Decode: batch 1, "
        f"{args.prompt_tokens}-token prompt + {args.new_tokens} greedy tokens (Parcae at μ_rec), "
        f"{args.threads} threads, best of {args.repeats}. Produced by `benchmarks/frontier.py`.",
        "",
        "| model | scheme | params | memory bytes | disk bytes | "
        + " | ".join(heads)
        + " | decode tok/s |",
        "|---|---|---:|---:|---:|" + "---:|" * len(heads) + "---:|",
    ]
    for row in rows:
        cells = [f"{row['bpb'][k]:.4f}" if k in row["bpb"] else "–" for k in keys]
        label = row["model"] + (
            f" (μ_rec={row['mean_recurrence']})" if row["mean_recurrence"] else ""
        )
        lines.append(
            f"| {label} | {row['scheme']} | {row['parameters']:,} | {row['memory_bytes']:,} | "
            f"{row['disk_bytes']:,} | " + " | ".join(cells) + f" | {row['decode_tok_s']:.1f} |"
        )
    lines += ["", "Parcae at μ_rec against the GPT, scheme by scheme:", ""]
    parcae_rows = {r["scheme"]: r for r in rows if r["family"] == "parcae"}
    for row in (r for r in rows if r["family"] == "gpt"):
        other = parcae_rows.get(row["scheme"])
        if other is None:
            continue
        lines.append(
            f"- {row['scheme']}: Δbpb = {other['bpb']['mu_rec'] - row['bpb']['fixed']:+.4f} "
            f"(negative: Parcae better) at {other['memory_bytes'] / row['memory_bytes']:.3f}× "
            f"the GPT's memory, {other['decode_tok_s'] / row['decode_tok_s']:.2f}× its decode "
            "speed"
        )
    lines += [
        "",
        "Notes: int4 is packed two values per byte on disk but held one value per int8 byte in "
        "memory (torchao's `IntxUnpackedToInt8Tensor`, the only CPU int4 path here), so int4 "
        "saves disk, not memory, against int8. Weight-only int8/int4 decode runs through "
        "torchao's CPU fallbacks and is slower than fp32 at this size. Decode timings on a small "
        "CPU vary run to run (up to ~2× between runs here); compare rows of one run.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    lines = [
        ("parcae", "mu_rec", "Parcae (T = μ_rec)", "C0", "-"),
        ("parcae", "1", "Parcae (T = 1)", "C0", "--"),
        ("gpt", "fixed", "GPT (fixed depth)", "C3", "-"),
    ]
    for family, key, label, color, style in lines:
        points = [r for r in rows if r["family"] == family]
        xs = [r["memory_bytes"] / 1e6 for r in points]
        ys = [r["bpb"][key] for r in points]
        ax.plot(xs, ys, style, color=color, marker="o", label=label)
        for r, x, y in zip(points, xs, ys):
            text = r["scheme"] if key == "1" else f"{r['scheme']} ({r['decode_tok_s']:.0f} tok/s)"
            offset = OFFSET[r["scheme"]]
            ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        if key != "1":
            ax2.plot(
                xs, [r["decode_tok_s"] for r in points], style, color=color, marker="o", label=label
            )
            for r, x in zip(points, xs):
                ax2.annotate(
                    r["scheme"],
                    (x, r["decode_tok_s"]),
                    textcoords="offset points",
                    xytext=OFFSET[r["scheme"]],
                    fontsize=8,
                )
    ax.set_xlabel("bytes in memory (MB, parameters + buffers)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("quality vs memory (lower-left is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax2.set_xlabel("bytes in memory (MB)")
    ax2.set_ylabel("greedy decode tokens/s (batch 1, CPU)")
    ax2.set_title("decode speed vs memory")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.parcae or not args.gpt or not args.data:
        print(HOW_TO, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    import_torchao("benchmarks/frontier.py")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = measure("parcae", args.parcae, args, tmp) + measure("gpt", args.gpt, args, tmp)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()}
    (out / "frontier.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n"
    )
    table = markdown(rows, args)
    (out / "frontier.md").write_text(table)
    plot(rows, Path(args.figure))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
