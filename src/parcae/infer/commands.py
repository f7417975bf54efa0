"""`parcae` subcommands of the infer package."""


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
