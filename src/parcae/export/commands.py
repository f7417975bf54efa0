"""`parcae export onnx`: a model as an ONNX graph for onnxruntime (see `parcae.export.onnx`)."""

from __future__ import annotations

import argparse

from parcae.commands import add_model_argument


def register(subparsers) -> None:
    """Add `parcae export` and its formats to the top-level parser."""
    export = subparsers.add_parser("export", help="export a model to a portable runtime")
    formats = export.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx",
        help="one ONNX graph (prefill and decoding, KV cache as inputs and outputs, the loop "
        "unrolled at --num-steps), for parcae generate --backend onnxruntime",
    )
    add_model_argument(onnx)
    onnx.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="loop depth T the graph is unrolled at (default: the model's mean recurrence)",
    )
    onnx.add_argument(
        "--cache-sharing", default="full", help="only full (one cache slot per loop step)"
    )
    onnx.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx's TorchScript tracer (fast) or its torch.export-based exporter",
    )
    onnx.add_argument("out", help="the .onnx file to write (replaced if it exists)")
    onnx.set_defaults(func=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> int:
    """Options, output path and model are checked before the export starts."""
    from parcae.export.onnx import (
        check_export_options,
        check_output_path,
        export_onnx,
        require_onnx,
    )
    from parcae.infer.loading import load_for_inference

    check_export_options(args.num_steps, args.cache_sharing, args.exporter)
    out = check_output_path(args.out)
    require_onnx()
    model, _ = load_for_inference(args.model, dtype=None)
    path = export_onnx(model, out, args.num_steps, args.cache_sharing, args.exporter)
    depth = (
        f" at T={args.num_steps or model.config.default_depth}" if model.config.is_looped else ""
    )
    print(f"exported {args.model}{depth} -> {path} ({path.stat().st_size:,d} bytes)")
    return 0
