"""Models: Parcae (looped), GPT (fixed depth), their configs, presets and construction."""

from __future__ import annotations

from typing import Any

import torch

from parcae.errors import ConfigError
from parcae.model.base import CausalLMOutput, LanguageModel
from parcae.model.config import CONFIG_CLASSES, GPTConfig, ParcaeConfig, TransformerConfig
from parcae.model.gpt import GPT
from parcae.model.parcae import Parcae
from parcae.model.presets import PRESETS
from parcae.model.cache import CacheSharing, KVCache
from parcae.model.loop import LoopStats
from parcae.model.recurrence import DepthPlan

MODEL_CLASSES: dict[str, type[LanguageModel]] = {"gpt": GPT, "parcae": Parcae}


def list_presets() -> list[str]:
    """Names accepted by `create_model` and `preset_config`."""
    return list(PRESETS)


def preset_config(name: str, **overrides: Any) -> TransformerConfig:
    """The config of preset `name` with `overrides` applied (unknown names are refused)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    architecture, fields = PRESETS[name]
    return TransformerConfig.from_dict({"architecture": architecture, **fields, **overrides})


def create_model(preset_or_config: str | TransformerConfig,
                 device: str | torch.device | None = None, **overrides: Any) -> LanguageModel:
    """A freshly initialised model from a preset name or a config, plus field overrides.

    device: default the current default device (so `with torch.device("meta"):` applies). On
    `meta` the model is built without memory or initialisation (for parameter counts, FLOPs, or
    sharding before `model.to_empty(device=...)` and `model.reset_parameters()`).
    """
    device = torch.get_default_device() if device is None else torch.device(device)
    if isinstance(preset_or_config, str):
        config = preset_config(preset_or_config, **overrides)
    elif isinstance(preset_or_config, TransformerConfig):
        config = preset_or_config.replace(**overrides) if overrides else preset_or_config
    else:
        raise ConfigError(f"expected a preset name or a model config, "
                          f"got {type(preset_or_config).__name__}")
    with torch.device("meta"):
        model = MODEL_CLASSES[config.architecture](config)
    if device.type != "meta":
        model.to_empty(device=device)
        with torch.device(device):
            model.reset_parameters()
    return model


__all__ = [
    "CONFIG_CLASSES", "GPT", "GPTConfig", "Parcae", "ParcaeConfig", "TransformerConfig",
    "CacheSharing", "CausalLMOutput", "DepthPlan", "KVCache", "LoopStats", "LanguageModel", "create_model", "list_presets",
    "preset_config",
]
