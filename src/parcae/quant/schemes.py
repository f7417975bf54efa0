"""Weight-only int8 and int4 quantization with group scales (torchao), saved and loaded.

Which weights: every `nn.Linear` and `nn.Embedding` matrix (the token table, value embeddings,
attention and MLP projections, the injection's `C`, the head) except the value-embedding gates
(`ve_gate`, 32 inputs wide, a few hundred weights) and any `adapter` module (the injection slices
its matrix). A tied head shares the token table's quantized matrix. Norms, the diagonal
injection's vectors and `B` stay in floating point.

Library paths (torchao >= 0.18, CPU):
- int8: `Int8WeightOnlyConfig(granularity=PerGroup(g))` -> `Int8Tensor` (int8 values, one fp32
  scale per group of g inputs, symmetric);
- int4: `IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(g))` ->
  `IntxUnpackedToInt8Tensor` (values in [-8, 7] held one per int8 byte in memory). torchao's
  `Int4WeightOnlyConfig` has no CPU path here (its packing formats need CUDA kernels, `mslk`,
  or bfloat16 tiles), so int4 uses the Intx path: on disk the values are packed two per byte.
  Both dequantize inside the matmul; neither is a hand-written kernel.

Saved format (a model directory, like `save_pretrained`'s):
- `config.json`: the model's fields plus `"quantization": {"scheme", "group_size", "library",
  "weights": [keys]}`;
- `model.safetensors`: every unquantized tensor under its usual key; for each quantized weight
  `K`, `K.qdata` (int8 [out, in] for int8; uint8 [out, in/2] for int4, low nibble = even input,
  stored as value + 8) and `K.scale` (fp32 [out, in/g]). Zero points are all zero (symmetric)
  and not stored. A tied head is stored once, as the token table.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from parcae.errors import CheckpointError, ConfigError, MissingDependencyError
from parcae.model.serialization import (
    QuantizedFormat,
    load_state_dict_strict,
    register_quantized_format,
)

SCHEMES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 32
LIBRARY = "torchao"
SKIPPED_NAMES = ("ve_gate", "adapter")
QDATA, SCALE = ".qdata", ".scale"


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's `quantization` entry."""

    scheme: str
    group_size: int

    def to_dict(self, weights: list[str]) -> dict:
        return {
            "scheme": self.scheme,
            "group_size": self.group_size,
            "library": LIBRARY,
            "weights": weights,
        }


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Silence what importing torchao writes (its logger's "Failed to load" lines for kernels
    this machine lacks, torch's pytree deprecation notices, warnings) inside the block; a
    library that imports torchao itself (transformers) is imported under it."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def import_torchao(feature: str = "parcae quantize"):
    """The `torchao.quantization` module, imported quietly; a MissingDependencyError naming
    the `quant` extra when torchao is not installed."""
    try:
        with quiet_torchao_import():
            import torchao.quantization as quantization
    except ImportError:
        raise MissingDependencyError("torchao", feature, extra="quant") from None
    return quantization


def check_scheme(scheme: str, group_size: int) -> Quantization:
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; choose one of int8, int4")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ConfigError(f"group size must be a positive integer, got {group_size!r}")
    if scheme == "int4" and group_size % 2:
        raise ConfigError(f"int4 needs an even group size (two values a byte), got {group_size}")
    return Quantization(scheme, group_size)


def quantizable(model: nn.Module) -> dict[str, nn.Module]:
    """{weight key: module} for the matrices this module quantizes (a tied head excluded: it
    shares the token table's)."""
    tied = getattr(model.config, "tie_embeddings", False)
    targets = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        if any(part in SKIPPED_NAMES for part in name.split(".")):
            continue
        if tied and name == "lm_head":
            continue
        targets[f"{name}.weight"] = module
    return targets


def check_group_size(model: nn.Module, group_size: int) -> None:
    """Refuse a group size that does not divide every quantized matrix's input width."""
    bad = [
        f"{key} ({module.weight.shape[1]})"
        for key, module in quantizable(model).items()
        if module.weight.shape[1] % group_size
    ]
    if bad:
        raise ConfigError(
            f"group size {group_size} does not divide the input width of "
            f"{len(bad)} matri{'x' if len(bad) == 1 else 'ces'}: {', '.join(bad[:3])}"
            + (", ..." if len(bad) > 3 else "")
        )


def _config(quantization: Quantization):
    ao = import_torchao()
    from torchao.quantization.granularity import PerGroup

    granularity = PerGroup(quantization.group_size)
    if quantization.scheme == "int8":
        return ao.Int8WeightOnlyConfig(granularity=granularity)
    return ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=granularity)


@torch.no_grad()
def quantize_model(model: nn.Module, quantization: Quantization) -> nn.Module:
    """Replace `model`'s matrices by torchao weight-only quantized tensors, in place."""
    check_group_size(model, quantization.group_size)
    ao = import_torchao()
    config = _config(quantization)
    for module in quantizable(model).values():
        weight = module.weight
        holder = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
        holder.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        ao.quantize_(holder, config)
        module.weight = holder.weight
    if getattr(model.config, "tie_embeddings", False):
        model.lm_head.weight = model.transformer.wte.weight
    model.quantization = quantization
    return model


def _pack_int4(values: Tensor) -> Tensor:
    shifted = (values.to(torch.int16) + 8).to(torch.uint8)
    return shifted[:, 0::2] | (shifted[:, 1::2] << 4)


def _unpack_int4(packed: Tensor) -> Tensor:
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).flatten(-2)


def quantized_state(model: nn.Module) -> tuple[dict[str, Tensor], dict]:
    """(tensors to save, the config's `quantization` entry) of a quantized model."""
    quantization: Quantization = model.quantization
    targets = quantizable(model)
    state: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_embeddings:
            continue
        if key in targets:
            if bool(value.zero_point.any()):
                raise ConfigError(f"{key}: non-zero zero points (expected symmetric quantization)")
            qdata = value.qdata.detach().cpu()
            if quantization.scheme == "int4":
                qdata = _pack_int4(qdata)
            state[key + QDATA] = qdata.contiguous()
            state[key + SCALE] = value.scale.detach().cpu().float().contiguous()
        else:
            state[key] = value.detach().cpu().contiguous()
    return state, quantization.to_dict(sorted(targets))


def parse_entry(entry: object, source: str) -> Quantization:
    """A config.json `quantization` entry, checked."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{source}: 'quantization' must be an object")
    try:
        return check_scheme(entry.get("scheme"), entry.get("group_size"))
    except ConfigError as error:
        raise CheckpointError(f"{source}: {error}") from None


@torch.no_grad()
def load_quantized(
    model: nn.Module,
    entry: object,
    state: dict[str, Tensor],
    source: str,
) -> nn.Module:
    """Quantize the freshly built `model` as `entry` says and fill it from `state` (the saved
    tensors), loading and checking the unquantized ones strictly."""
    quantization = parse_entry(entry, source)
    import_torchao(f"loading the {quantization.scheme} model {source}")
    targets = quantizable(model)
    plain = {k: v for k, v in state.items() if not k.endswith((QDATA, SCALE))}
    current = model.state_dict()
    for key in targets:
        plain[key] = current[key]  # placeholders for the strict check
    if model.config.tie_embeddings:
        plain.pop("lm_head.weight", None)
    load_state_dict_strict(model, plain, source)
    quantize_model(model, quantization)
    problems = []
    for key, module in targets.items():
        weight = module.weight
        qdata, scale = state.get(key + QDATA), state.get(key + SCALE)
        if qdata is None or scale is None:
            problems.append(f"missing {key + QDATA} or {key + SCALE}")
            continue
        if quantization.scheme == "int4" and qdata.dtype == torch.uint8:
            qdata = _unpack_int4(qdata)
        if qdata.shape != weight.qdata.shape or scale.shape != weight.scale.shape:
            problems.append(
                f"{key}: stored {tuple(qdata.shape)}/{tuple(scale.shape)}, the config needs "
                f"{tuple(weight.qdata.shape)}/{tuple(weight.scale.shape)}"
            )
            continue
        if qdata.dtype != torch.int8 or not scale.is_floating_point():
            problems.append(f"{key}: expected int8 values and floating-point scales")
            continue
        weight.qdata.copy_(qdata)
        weight.scale.copy_(scale)
    extra = sorted(
        k for k in state if k.endswith((QDATA, SCALE)) and k.rsplit(".", 1)[0] not in targets
    )
    if extra:
        problems.append(f"unexpected keys: {', '.join(extra)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    return model


def register() -> None:
    """Make `save_pretrained` and `from_pretrained` write and read quantized models in this
    format (`parcae.model.serialization`, which does not import this layer); `import parcae`
    calls it."""
    register_quantized_format(QuantizedFormat(save=quantized_state, load=load_quantized))
