"""Model directories on disk: reading them strictly, writing ours.

Two formats are read (`parcae.model.from_pretrained` builds the model from them):
- ours (written by `save_pretrained`): `config.json` holding `{"architecture": ..., fields}` and
  `model.safetensors` (a tied head is stored once and re-tied on load); transformers'
  `save_pretrained` of `parcae.hf.transformers.ParcaeForCausalLM` writes the same plus its own
  keys (`model_type`, ...; ignored here) and weights under the prefix `model.` (stripped);
- the official implementation's (ARCHITECTURE §3): its flat `config.json` and
  `pytorch_model.bin`, `model.safetensors` or `model.pt`; prefixes `module.`, `_orig_mod.`,
  `model.` are stripped and the derived `freqs_cis` buffer dropped.
A model quantized by `parcae quantize` is ours plus a `quantization` entry in `config.json` and
packed weights with their scales. `parcae.quant.schemes` holds that format and registers how to
write and rebuild it (`register_quantized_format`, called by `import parcae`): the model layer
never imports the quantization layer above it (ARCHITECTURE §8).

Loading is strict: every missing, unexpected or mis-shaped key, and every tensor that is not
floating point or holds NaN or infinity, is named in one error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from parcae.errors import CheckpointError, ParcaeError
from parcae.model.config import CONFIG_CLASSES, ParcaeConfig, TransformerConfig
from parcae.outputs import staged_directory, write_atomic, write_text_atomic

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt")
STRIPPED_PREFIXES = ("module.", "_orig_mod.", "model.")
DERIVED_KEYS = ("freqs_cis",)
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class QuantizedFormat:
    """How a quantized model is written and read back (registered by `parcae.quant`).

    save(model) -> (tensors to write, the config's `quantization` entry);
    load(model, entry, state, source): quantize the freshly built `model` (its weights zeroed
    placeholders) as `entry` says and fill it from the saved tensors `state`, checked strictly
    (errors name `source`)."""

    save: Callable[[nn.Module], tuple[dict[str, Tensor], dict]]
    load: Callable[[nn.Module, object, dict[str, Tensor], str], None]


_QUANTIZED_FORMATS: dict[str, QuantizedFormat] = {}  # "quantization" -> the registered format


def register_quantized_format(quantized: QuantizedFormat) -> None:
    """Make `save_pretrained` and `from_pretrained` handle quantized models through
    `quantized`; registering again replaces it."""
    _QUANTIZED_FORMATS["quantization"] = quantized


def quantized_format(source: str) -> QuantizedFormat:
    """The registered quantized format; a CheckpointError for `source` when none is."""
    quantized = _QUANTIZED_FORMATS.get("quantization")
    if quantized is None:
        raise CheckpointError(
            f"{source} is quantized and no quantized format is registered (import parcae.quant)"
        )
    return quantized


def read_config(path: Path) -> TransformerConfig:
    """The model config stored in directory `path` (ours or the official one)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json (not a model directory)")
    try:
        data = json.loads(config_file.read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{config_file}: unreadable config ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    try:
        if "architecture" in data:
            data.pop("parcae_format_version", None)
            data.pop("quantization", None)  # read by read_quantization
            if "transformers_version" in data:  # written by transformers: ours plus its own
                data = _parcae_fields(data)
            elif data.pop("model_type", "parcae") != "parcae":
                raise CheckpointError(f"{config_file}: model_type must be 'parcae'")
            return TransformerConfig.from_dict(data)
        return ParcaeConfig.from_official(data)
    except ParcaeError as error:
        raise CheckpointError(f"{config_file}: {error}") from None


def read_quantization(path: Path) -> dict[str, Any] | None:
    """The `quantization` entry of `path`'s config.json (written by `parcae quantize`), or
    None for an unquantized model. Call after `read_config`, which checks the file."""
    data = json.loads((path / "config.json").read_text())
    return data.get("quantization") if "architecture" in data else None


def _parcae_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The architecture and its config fields from a transformers `config.json` (which adds
    model_type, architectures, transformers_version, dtype, ...)."""
    config_class = CONFIG_CLASSES.get(data["architecture"])
    if config_class is None:
        return data  # from_dict names the unknown architecture
    names = {field.name for field in dataclasses.fields(config_class)}
    return {
        "architecture": data["architecture"],
        **{key: value for key, value in data.items() if key in names},
    }


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors from the first weights file found in `path`, keys normalised."""
    for name in WEIGHT_FILES:
        weights_file = path / name
        if weights_file.is_file():
            break
    else:
        raise CheckpointError(
            f"{path}: no weights file (expected one of {', '.join(WEIGHT_FILES)})"
        )
    try:
        if weights_file.suffix == ".safetensors":
            state = load_file(weights_file)
        else:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        SafetensorError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
    ) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{weights_file}: unreadable weights ({message})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint holding the model's state dict
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights_file}: expected a state dict, got {type(state).__name__}")
    return normalise_keys(state)


def normalise_keys(state: dict[str, Any]) -> dict[str, Any]:
    """Strip wrapper prefixes and drop buffers that are derived from the config."""
    normalised = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        if key not in DERIVED_KEYS:
            normalised[key] = value
    return normalised


def load_state_dict_strict(
    model: nn.Module,
    state: dict[str, Tensor],
    source: str,
    assign_to: tuple[torch.device, torch.dtype] | None = None,
) -> None:
    """Copy `state` into `model`, naming every missing, unexpected or mis-shaped key.

    assign_to: (device, dtype) to make `state`'s tensors the model's own parameters instead of
    copying them (a model built on `meta`): each floating-point tensor is moved or cast there
    one at a time (no copy when it already is), and a tied head is tied again. `state` is
    consumed: its entries are replaced, so a cast original is freed as soon as it is cast.
    """
    expected = model.state_dict()
    tied = getattr(model.config, "tie_embeddings", False)
    if tied and "lm_head.weight" not in state and "transformer.wte.weight" in state:
        if assign_to is None:
            state = {**state}
        state["lm_head.weight"] = state["transformer.wte.weight"]
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    for key in sorted(set(expected) & set(state)):
        value = state[key]
        if not isinstance(value, Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value.shape != expected[key].shape:
            problems.append(
                f"{key} has shape {tuple(value.shape)}, "
                f"the config needs {tuple(expected[key].shape)}"
            )
        elif expected[key].is_floating_point() and not value.is_floating_point():
            problems.append(f"{key} holds {value.dtype}, not floating-point weights")
        elif value.is_floating_point() and not _all_finite(value):
            problems.append(f"{key} holds NaN or infinite values")
    if (
        tied
        and not problems
        and not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    ):
        problems.append(
            "lm_head.weight differs from transformer.wte.weight but the config ties them"
        )
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    if assign_to is None:
        model.load_state_dict(state, strict=True)
        return
    device, dtype = assign_to
    for key, value in state.items():  # in place: a cast original is freed at once
        if not (tied and key == "lm_head.weight"):
            state[key] = value.to(device, dtype if value.is_floating_point() else None)
    if tied:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.tie_weights()


def _all_finite(value: Tensor) -> bool:
    """No NaN or infinity in `value`: its min and max are finite (NaN propagates through both);
    one pass, no mask as large as the tensor."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `config.json` and `model.safetensors` into `path` (a model quantized by
    `parcae.quant` is written in its format). A new `path` appears whole or not at all (written
    in a staging directory, then renamed); into an existing directory, each file is replaced
    atomically."""
    path = Path(path)
    if not path.exists():
        with staged_directory(path) as staging:
            save_pretrained(model, staging)
        return
    config = {
        **model.config.to_dict(),
        "model_type": "parcae",
        "parcae_format_version": FORMAT_VERSION,
    }
    if getattr(model, "quantization", None) is not None:
        state, config["quantization"] = quantized_format(str(path)).save(model)
    else:
        state = {k: value.detach().cpu().contiguous() for k, value in model.state_dict().items()}
        if model.config.tie_embeddings:
            state.pop("lm_head.weight")
    write_atomic(path / "model.safetensors", lambda handle: handle.write(save(state)))
    write_text_atomic(path / "config.json", json.dumps(config, indent=2) + "\n")
