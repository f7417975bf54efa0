"""`parcae tokenizer ...` and `parcae data ...` subcommands."""

from __future__ import annotations

import argparse

from parcae.data.loader import TokenLoader
from parcae.data.prepare import DEFAULT_SHARD_TOKENS, load_manifest, prepare_dataset
from parcae.data.shards import SPLITS
from parcae.data.split import DEFAULT_VAL_FRACTION
from parcae.data.train_tokenizer import train_tokenizer

INPUT_HELP = (
    "corpus: a .txt/.jsonl/.parquet file, a directory of them, hf:NAME[:CONFIG] "
    "(Hugging Face dataset) or the recipe 'shakespeare'"
)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help=INPUT_HELP)
    parser.add_argument(
        "--text-field",
        default="text",
        help="JSONL field / parquet column / dataset field holding the text",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help="fraction of documents (chosen by hash) held out for validation",
    )


def _tokenizer_train(args: argparse.Namespace) -> int:
    report = train_tokenizer(
        args.input, args.vocab_size, args.out, args.val_fraction, args.text_field, args.max_chars
    )
    print(
        f"trained a {report.tokenizer.vocab_size}-token tokenizer on "
        f"{report.train_documents} documents ({report.train_chars:,} characters) in "
        f"{report.seconds:.1f} s -> {report.path}"
    )
    if report.heldout_bytes_per_token is None:
        print(
            f"compression: {report.train_bytes_per_token:.3f} bytes/token on training text "
            "(no held-out documents; raise --val-fraction to measure on unseen text)"
        )
    else:
        print(
            f"compression: {report.heldout_bytes_per_token:.3f} bytes/token on "
            f"{report.heldout_documents} held-out documents"
        )
    return 0


def _split_summary(manifest: dict) -> str:
    splits = manifest["splits"]
    return "; ".join(
        f"{split}: {splits[split]['documents']:,} documents, {splits[split]['tokens']:,} tokens "
        f"in {len(splits[split]['shards'])} shards"
        for split in SPLITS
    )


def _data_prepare(args: argparse.Namespace) -> int:
    manifest = prepare_dataset(
        args.input, args.tokenizer, args.out, args.val_fraction, args.text_field, args.shard_tokens
    )
    print(
        f"{args.out}: {_split_summary(manifest)} "
        f"({manifest['dtype']}, tokenizer {manifest['tokenizer_hash']})"
    )
    if manifest["splits"]["val"]["tokens"] == 0 and args.val_fraction > 0:
        print("note: no document fell in the val split; use a larger --val-fraction to validate")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.data)
    print(
        f"{args.data}: source {manifest['source']}, tokenizer {manifest['tokenizer_hash']} "
        f"(vocab {manifest['vocab_size']}, {manifest['dtype']})"
    )
    print(_split_summary(manifest))
    loader = TokenLoader(args.data, "train", batch_size=1, seq_len=args.seq_len)
    print(
        f"train at seq_len {args.seq_len}: {loader.rows_per_epoch:,} rows, "
        f"{loader.tokens_per_epoch:,} tokens per epoch, "
        f"packing efficiency {loader.packing_efficiency:.4%}"
    )
    return 0


def register(subparsers) -> None:
    """Add the data subcommands to the top-level parser."""
    tokenizer = subparsers.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    tokenizer_commands = tokenizer.add_subparsers(
        dest="tokenizer_command", required=True, metavar="COMMAND"
    )
    train = tokenizer_commands.add_parser(
        "train", help="train a tokenizer and report its compression"
    )
    _add_source_arguments(train)
    train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="vocabulary size, the 3 special tokens included",
    )
    train.add_argument("--out", required=True, help="directory to write tokenizer.json into")
    train.add_argument(
        "--max-chars", type=int, default=None, help="train on at most this many characters"
    )
    train.set_defaults(func=_tokenizer_train)

    data = subparsers.add_parser("data", help="prepare and inspect token shards")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    prepare = data_commands.add_parser(
        "prepare", help="tokenise a corpus into train/val shards (resumable)"
    )
    _add_source_arguments(prepare)
    prepare.add_argument(
        "--tokenizer", required=True, help="tokenizer.json or the directory holding it"
    )
    prepare.add_argument("--out", required=True, help="directory for the shards and manifest")
    prepare.add_argument(
        "--shard-tokens",
        type=int,
        default=DEFAULT_SHARD_TOKENS,
        help="tokens per train shard (about)",
    )
    prepare.set_defaults(func=_data_prepare)

    info = data_commands.add_parser("info", help="summarise a prepared dataset")
    info.add_argument("--data", required=True, help="a directory made by `parcae data prepare`")
    info.add_argument("--seq-len", type=int, default=256, help="row length to report packing for")
    info.set_defaults(func=_data_info)
