"""Decode tok/s against the official implementation: same weights, same machine, one process.

The official code (`sandyresearch/parcae`, package `parcae_lm`) is imported from a checkout the
user gives; it is never copied into this repository:

    git clone https://github.com/sandyresearch/parcae /tmp/official
    OMP_NUM_THREADS=2 python benchmarks/official_decode.py --official /tmp/official --threads 2

Model: issue 14's edge configuration (`benchmarks/decode.py`: width 256, 2/2/2 layers,
vocabulary 8192, context 256, T = 8, fp32) with `state_init=zero`, because the official code
redraws a random initial state from the global RNG on every forward (ARCHITECTURE §1.4) and
greedy tokens could not be compared otherwise. Our random weights are loaded into the official
model through its own config class (`ParcaeConfig.to_official`) and its state-dict names (the
same as ours); the script checks that both give the same logits and the same greedy tokens.

Generation: a 200-token prompt + 50 greedy tokens, batch 1. The official model has no
`generate` and its forward takes no cache, so decoding with it, as a user would, is one full
forward of the whole sequence per new token (`forward(ids, num_steps_pair=[T, 0])`). Ours is
`parcae.generate(..., temperature=0)`, eager (the default) and `compile=True`. Decode tok/s =
49 / (time(50 new) - time(1 new)); each figure is the best of `--repeats` rounds, the three
implementations interleaved within each round so that a change in the machine's load reaches all
of them alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from decode import EDGE  # benchmarks/decode.py: issue 14's edge configuration

import parcae

T, PROMPT, NEW = 8, 200, 50
HOW_TO_GET = (
    "give --official PATH, a checkout of the official code: "
    "git clone https://github.com/sandyresearch/parcae PATH"
)


def load_official(path: Path, ours: parcae.Parcae) -> torch.nn.Module:
    """The official `Parcae` built from `path` with `ours`' config and weights, in eval mode."""
    if not (path / "parcae_lm").is_dir():
        raise SystemExit(f"{path} holds no parcae_lm package: {HOW_TO_GET}")
    sys.path.insert(0, str(path))
    from parcae_lm.models.parcae.config import ParcaeConfig
    from parcae_lm.models.parcae.parcae import Parcae

    fields = ours.config.to_official()
    for written_on_save in ("_class_name", "_is_recurrent_block_config"):
        fields.pop(written_on_save, None)
    official = Parcae(ParcaeConfig(**fields))
    missing, unexpected = official.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or set(missing) != {"freqs_cis"}:  # its rotary table, which it computes
        raise SystemExit(f"weights do not map: missing {missing}, unexpected {unexpected}")
    return official.eval()


@torch.no_grad()
def official_generate(model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding with the official model: a full forward per new token."""
    ids, steps = prompt, torch.tensor([T, 0])
    for _ in range(new):
        logits = model(ids, num_steps_pair=steps, return_logits=True)["logits"]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="a checkout of sandyresearch/parcae")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.official is None:
        raise SystemExit(HOW_TO_GET)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = parcae.create_model("parcae-tiny", state_init="zero", **EDGE).eval()
    official = load_official(args.official, ours)
    vocab = ours.config.vocab_size
    prompt = torch.randint(vocab, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine = ours(prompt, num_steps=T).logits[..., :vocab]
        theirs = official(prompt, num_steps_pair=torch.tensor([T, 0]), return_logits=True)
    logit_gap = float((mine - theirs["logits"][..., :vocab]).abs().max())

    runs = {
        "official": lambda count: official_generate(official, prompt, count),
        "ours eager": lambda count: parcae.generate(
            ours, prompt, count, num_steps=T, temperature=0
        ),
        "ours compiled": lambda count: parcae.generate(
            ours, prompt, count, num_steps=T, temperature=0, compile=True
        ),
    }
    tokens = {name: run(NEW) for name, run in runs.items()}  # warm-up, compilation
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(1)
            middle = time.perf_counter()
            run(NEW)
            end = time.perf_counter()
            prefill, total = best[name]
            best[name] = (min(prefill, middle - start), min(total, end - middle))
    print(
        f"width 256, 2/2/2 layers, vocab 8192, T={T}, prompt {PROMPT} + {NEW} greedy, batch 1, "
        f"{torch.get_num_threads()} threads, best of {args.repeats} interleaved rounds"
    )
    print(f"logits of the prompt: max |ours - official| = {logit_gap:.2e}")
    print(f"{'implementation':<14} {'prefill ms':>10} {'decode tok/s':>12} {'vs official':>11}")
    official_rate = (NEW - 1) / (best["official"][1] - best["official"][0])
    for name, (prefill, total) in best.items():
        rate = (NEW - 1) / (total - prefill)  # best total minus best prefill, as decode.py
        print(f"{name:<14} {prefill * 1e3:>10.1f} {rate:>12.1f} {rate / official_rate:>10.2f}x")
    same = all(torch.equal(tokens["official"], other) for other in tokens.values())
    print(f"greedy tokens equal: {same}")


if __name__ == "__main__":
    main()
