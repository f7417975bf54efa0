"""`parcae presets` (model presets with parameter counts) and `parcae flops` (a model's
parameters by stage and FLOPs per token)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list model presets and their parameter counts")
    parser.set_defaults(func=run_presets)

    flops = subparsers.add_parser(
        "flops",
        help="parameters by stage and FLOPs per token (training, and forward at depth T)",
        description="Parameters by stage and FLOPs per token of a model: training (forward + "
        "backward at the depth sampler's expected depth) and a forward at each depth T. What "
        "is counted: docs/ARCHITECTURE.md §6.1.",
    )
    flops.add_argument("model", help="a preset name or a model directory (config.json)")
    flops.add_argument(
        "overrides", nargs="*", metavar="key=value", help="model config field overrides"
    )
    flops.add_argument("--seq-len", type=int, default=None, help="default: the context length")
    flops.add_argument(
        "--depths", default=None, help="forward depths T, e.g. 1,2,4,8 (default: 1, μ_rec, 2μ_rec)"
    )
    flops.add_argument("--json", action="store_true", help="print JSON instead of a table")
    flops.set_defaults(func=run_flops)


def run_presets(args) -> int:
    from parcae.model import create_model, list_presets

    for name in list_presets():
        model = create_model(name, device="meta")
        print(f"{name:<14} {model.num_params():>15,d} parameters")
    return 0


def run_flops(args) -> int:
    from parcae.errors import ConfigError
    from parcae.eval.selection import parse_depths
    from parcae.model.budget import format_budget, model_budget, model_config

    config = model_config(args.model, args.overrides)
    seq_len = config.context_length if args.seq_len is None else args.seq_len
    if not 1 <= seq_len <= config.context_length:
        raise ConfigError(
            f"--seq-len must be in [1, {config.context_length}] (the context length), got {seq_len}"
        )
    mu = config.default_depth  # None for a GPT: no depths
    if args.depths is not None:
        depths = parse_depths(args.depths)
    else:
        depths = [] if mu is None else sorted({1, mu, 2 * mu})
    budget = model_budget(config, seq_len, depths)
    if args.json:
        print(json.dumps({"model": args.model, "seq_len": seq_len, **budget.to_dict()}, indent=2))
    else:
        print(format_budget(args.model, config, seq_len, budget))
    return 0
