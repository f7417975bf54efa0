"""Data pipeline benchmark on the Shakespeare corpus.

Measures tokenizer training time, tokenisation throughput (MB/s of UTF-8 text, all cores),
preparation time, and loader throughput (rows/s).

    python benchmarks/data.py [--corpus ../shared/data/shakespeare] [--vocab-size 4096]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from parcae.data.loader import TokenLoader
from parcae.data.prepare import prepare_dataset
from parcae.data.sources import iter_documents
from parcae.data.tokenizer import Tokenizer

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", default=str(DEFAULT_CORPUS), help="any --input spec (default: the shared plays)"
    )
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-steps", type=int, default=500)
    args = parser.parse_args()

    texts = list(iter_documents(args.corpus))
    megabytes = sum(len(text.encode()) for text in texts) / 1e6
    print(f"corpus: {len(texts)} documents, {megabytes:.2f} MB")

    tokenizer, seconds = timed(Tokenizer.train, texts, args.vocab_size)
    print(f"tokenizer training (vocab {args.vocab_size}): {seconds:.2f} s")
    ids, seconds = timed(tokenizer.encode_batch, texts)
    n_tokens = sum(len(x) for x in ids)
    print(
        f"tokenisation: {megabytes / seconds:.2f} MB/s "
        f"({n_tokens / seconds / 1e6:.2f} M tokens/s, "
        f"{megabytes * 1e6 / n_tokens:.3f} bytes/token)"
    )

    with tempfile.TemporaryDirectory() as work:
        tokenizer.save(Path(work) / "tokenizer")
        _, seconds = timed(
            prepare_dataset,
            args.corpus,
            Path(work) / "tokenizer",
            Path(work) / "data",
            progress=False,
        )
        print(f"preparation: {seconds:.2f} s ({megabytes / seconds:.2f} MB/s)")
        loader = TokenLoader(Path(work) / "data", "train", args.batch_size, args.seq_len)
        _, seconds = timed(lambda: [loader.next_batch() for _ in range(args.loader_steps)])
        rows = args.loader_steps * args.batch_size
        print(
            f"loader (seq_len {args.seq_len}, batch {args.batch_size}): "
            f"{rows / seconds:,.0f} rows/s "
            f"({rows * args.seq_len / seconds / 1e6:.1f} M tokens/s), "
            f"packing efficiency {loader.packing_efficiency:.4%}"
        )


if __name__ == "__main__":
    main()
