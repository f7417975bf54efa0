"""Models: Parcae (looped), GPT (fixed depth), their configs, presets and construction
(`create_model` for a fresh model, `from_pretrained` for a saved or official one)."""

from __future__ import annotations

import os
from typing import Any

import torch

from parcae.device import resolve_device
from parcae.errors import ConfigError
from parcae.model.base import CausalLMOutput, LanguageModel
from parcae.model.cache import CacheSharing, KVCache
from parcae.model.config import CONFIG_CLASSES, GPTConfig, ParcaeConfig, TransformerConfig
from parcae.model.gpt import GPT
from parcae.model.hub import resolve_model_dir
from parcae.model.loop import LoopStats
from parcae.model.parcae import Parcae
from parcae.model.presets import PRESETS
from parcae.model.recurrence import DepthPlan
from parcae.model.serialization import (
    load_state_dict_strict,
    quantized_format,
    read_config,
    read_quantization,
    read_state_dict,
    save_pretrained,
)

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


def create_model(
    preset_or_config: str | TransformerConfig,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> LanguageModel:
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
        raise ConfigError(
            f"expected a preset name or a model config, got {type(preset_or_config).__name__}"
        )
    with torch.device("meta"):
        model = MODEL_CLASSES[config.architecture](config)
    if device.type != "meta":
        model.to_empty(device=device)
        with torch.device(device):
            model.reset_parameters()
    return model


def from_pretrained(
    ref: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LanguageModel:
    """Load a model strictly; returns it in eval mode.

    ref: a model directory (ours, transformers' or official), a training run directory, or a
    Hugging Face Hub repo `org/name[@revision]` (downloaded into the cache, or read from it
    offline; `parcae.model.hub`). A local path always wins over a Hub name.
    device, dtype: where and in what floating-point type the weights live (default float32).
    The model is built on the `meta` device and the weights read from disk are assigned to it,
    so nothing is initialised at random and no second copy of the weights is made. A device
    this machine lacks is refused (`parcae.device.resolve_device`) before reading.
    """
    device = resolve_device(device, "device")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
    path = resolve_model_dir(ref, revision, cache_dir, token)
    config = read_config(path)
    state = read_state_dict(path)
    quantization = read_quantization(path)
    if quantization is not None and dtype not in (None, torch.float32):
        raise ConfigError(f"{path}: a quantized model runs in float32, not {dtype}")
    model = create_model(config, "meta")
    if quantization is not None:  # written by `parcae quantize`: filled in place
        quantized = quantized_format(str(path))
        model.to_empty(device=device)
        model.tie_weights()
        for parameter in model.parameters():  # finite placeholders, overwritten by the file
            parameter.detach().zero_()
        quantized.load(model, quantization, state, str(path))
    else:
        load_state_dict_strict(model, state, str(path), assign_to=(device, dtype or torch.float32))
    model.reset_buffers()
    model.to(dtype=dtype)  # the rotary tables (the weights already are in dtype)
    return model.eval()


__all__ = [
    "CONFIG_CLASSES",
    "GPT",
    "GPTConfig",
    "Parcae",
    "ParcaeConfig",
    "TransformerConfig",
    "CacheSharing",
    "CausalLMOutput",
    "DepthPlan",
    "KVCache",
    "LoopStats",
    "LanguageModel",
    "create_model",
    "from_pretrained",
    "list_presets",
    "preset_config",
    "save_pretrained",
]
