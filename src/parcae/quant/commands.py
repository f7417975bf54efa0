"""`parcae quantize --model PATH --scheme int8|int4 OUT [--group-size G]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from parcae.commands import add_model_argument
from parcae.errors import ConfigError
from parcae.quant.schemes import DEFAULT_GROUP_SIZE, SCHEMES


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
    quantize = subparsers.add_parser(
        "quantize",
        help="weight-only int8 / int4 quantization with group scales (torchao), saved as a "
        "model directory that from_pretrained, generate and eval load",
    )
    add_model_argument(quantize)  # an unquantized model
    quantize.add_argument("--scheme", required=True, help=f"one of {', '.join(SCHEMES)}")
    quantize.add_argument(
        "--group-size",
        type=int,
        default=DEFAULT_GROUP_SIZE,
        help="inputs sharing one scale (32, 64, 128, ...; must divide every quantized "
        f"matrix's input width; default {DEFAULT_GROUP_SIZE})",
    )
    quantize.add_argument("out", help="output directory: must not exist or be empty")
    quantize.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    from parcae.infer.loading import find_tokenizer, resolve_model_dir
    from parcae.model.serialization import read_config, read_quantization
    from parcae.outputs import check_not_file, output_directory, staged_directory
    from parcae.quant.schemes import check_scheme, import_torchao, quantize_model

    quantization = check_scheme(args.scheme, args.group_size)
    out = check_not_file(args.out, "output directory")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} is not empty")
    model_dir = resolve_model_dir(args.model)
    read_config(model_dir)
    entry = read_quantization(model_dir)
    if entry is not None:
        raise ConfigError(
            f"{model_dir} is already quantized ({entry.get('scheme', '?')}); quantize the "
            "floating-point model instead"
        )
    import_torchao()

    from parcae.model import from_pretrained
    from parcae.quant.schemes import check_group_size

    model = from_pretrained(model_dir)
    check_group_size(model, quantization.group_size)
    quantize_model(model, quantization)
    output_directory(out.parent, "the directory of the output")
    with staged_directory(out) as staging:  # out appears whole (weights, config, tokenizer)
        model.save_pretrained(staging)
        tokenizer = find_tokenizer(model_dir)
        if tokenizer is not None:
            tokenizer.save(staging)
    before = _size(model_dir / "model.safetensors")
    after = _size(out / "model.safetensors")
    ratio = f" ({after / before:.2f}x)" if before else ""
    print(
        f"wrote {out}: {quantization.scheme}, group size {quantization.group_size}, "
        f"{after / 1e6:.2f} MB{ratio}"
    )
    return 0


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
