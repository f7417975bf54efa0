"""`parcae presets`: list model presets with parameter counts."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list model presets and their parameter counts")
    parser.set_defaults(func=run_presets)


def run_presets(args) -> int:
    from parcae.model import create_model, list_presets

    for name in list_presets():
        model = create_model(name, device="meta")
        print(f"{name:<14} {model.num_params():>15,d} parameters")
    return 0
