"""The one place a device name from a user (a config value, a `--device` option) becomes a
`torch.device`, refused in one line when it is not a device or this machine has none of it."""

from __future__ import annotations

import torch

from parcae.errors import ConfigError

BACKENDS = {
    "cuda": lambda: torch.cuda.is_available(),
    "mps": lambda: torch.backends.mps.is_available(),
    "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
}


def resolve_device(name: str, what: str = "device") -> torch.device:
    """`auto`: cuda when available, else cpu; any other name as torch reads it ("cpu",
    "cuda:1"), refused unless this machine has it. `what` names the setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"invalid {what}: {name!r} is not a device (expected auto, cpu, cuda or cuda:N)",
            what,
        ) from None
    available = BACKENDS.get(device.type)
    if available is not None and not available():
        raise ConfigError(f"{what} is {name!r}, but this machine has no {device.type}")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(f"{what} is {name!r}, but this machine has {count} CUDA device(s)")
    if device.type not in ("cpu", *BACKENDS):
        raise ConfigError(
            f"{what} is {name!r}, which parcae does not run on: use auto, cpu or cuda"
        )
    return device
