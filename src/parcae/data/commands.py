"""`parcae tokenizer ...` and `parcae data ...` subcommands."""


def register(subparsers) -> None:
    """Add the data subcommands to the top-level parser."""
