"""Load time and peak memory of `parcae.from_pretrained` on a large checkpoint in the official
layout (the released models': `config.json` with `_class_name`, pickled `pytorch_model.bin`).

1. Writes a random checkpoint of `--preset` (default parcae-1.3b) into `--dir`, unless one is
   there: the model is built on `meta`, each tensor drawn once in `--file-dtype` (float32:
   ~5.6 GB for 1.3b; bfloat16 halves it) and `torch.save`d; nothing is materialised twice.
2. Loads it `--repeats` times, each in a fresh process (so the writer's memory and the page
   cache of an earlier load in the same process do not count), in `--dtype`, and reports
   - seconds: the `from_pretrained` call alone (imports excluded);
   - peak RSS: the process's high-water RSS (`VmHWM` of /proc/self/status; `ru_maxrss` would
     inherit the parent's peak across fork and exec) minus its RSS after the imports, i.e. what
     loading added at its peak (memory-mapped file pages that were touched count: resident);
   - the ratio of that peak to the weight file's bytes (the target: below 1.3).

    df -h /tmp     # 1.3b in float32 needs ~5.6 GB free
    python benchmarks/load.py [--preset parcae-1.3b] [--file-dtype float32] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import parcae
from parcae.model.official import fields_to_official

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="parcae-1.3b")
    parser.add_argument("--dir", default="/tmp/parcae-load-benchmark")
    parser.add_argument("--file-dtype", choices=DTYPES, default="float32")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="loaded in")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child
    return parser.parse_args(argv)


def write_checkpoint(preset: str, directory: Path, dtype: torch.dtype) -> int:
    """A random `preset` checkpoint in the official layout; returns the weight file's bytes."""
    weights = directory / "pytorch_model.bin"
    if weights.is_file():
        return weights.stat().st_size
    directory.mkdir(parents=True, exist_ok=True)
    model = parcae.create_model(preset, device="meta")
    config = {**fields_to_official(model.config.to_dict()), "_class_name": "ParcaeConfig"}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_embeddings:
            continue  # stored once, as the released checkpoints do
        tensor = torch.empty(value.shape, dtype=dtype)
        state[key] = tensor.normal_(std=0.02, generator=generator)
    torch.save(state, directory / "pytorch_model.bin.tmp")
    (directory / "pytorch_model.bin.tmp").rename(weights)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return weights.stat().st_size


def memory_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024  # kB
    raise KeyError(field)


def measure(directory: Path, dtype: torch.dtype) -> dict:
    """One load in this process: seconds and the RSS it added at its peak (bytes)."""
    before = memory_status("VmHWM")
    start = time.perf_counter()
    model = parcae.from_pretrained(directory, dtype=dtype)
    seconds = time.perf_counter() - start
    peak = memory_status("VmHWM")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"seconds": seconds, "peak_added": peak - before, "param_bytes": params}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    directory = Path(args.dir)
    if args.measure:
        print(json.dumps(measure(directory, DTYPES[args.dtype])))
        return
    start = time.perf_counter()
    file_bytes = write_checkpoint(args.preset, directory, DTYPES[args.file_dtype])
    print(f"checkpoint: {directory} ({file_bytes / 1e9:.2f} GB, {args.file_dtype}), ready in "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    for _ in range(args.repeats):
        child = [sys.executable, __file__, "--dir", str(directory), "--dtype", args.dtype]
        result = json.loads(subprocess.run([*child, "--measure"], check=True,
                                           capture_output=True, text=True).stdout)  # fmt: skip
        print(
            f"load in {args.dtype}: {result['seconds']:.1f} s, peak RSS added "
            f"{result['peak_added'] / 1e9:.2f} GB = {result['peak_added'] / file_bytes:.2f}x "
            f"the weight file ({result['param_bytes'] / 1e9:.2f} GB of parameters)"
        )


if __name__ == "__main__":
    main()
