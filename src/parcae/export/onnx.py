"""`parcae export onnx`: a model as one ONNX graph, its KV cache explicit, its loop unrolled.

One graph serves prefill and decoding (a single file, `OUT.onnx`):

    inputs   input_ids  int64 (1, S)                  S dynamic: the prompt, then 1 per step
             position   int64 (1,)                    column (= position) of input_ids[0, 0]
             keys       float32 (n_slots, 1, Hkv, L, hd)
             values     float32 (n_slots, 1, Hkv, L, hd)
    outputs  logits     float32 (1, S, vocab_size)    padding columns of the head dropped
             keys_out   float32 (n_slots, 1, Hkv, L, hd)  the cache with columns
             values_out float32 (n_slots, 1, Hkv, L, hd)  [position, position + S) written

Prefill is the call at position 0 with the whole prompt, a decode step the call at position p
with one token; the caller feeds `keys_out` / `values_out` back as the next call's `keys` /
`values` (`parcae.export.runtime`). The cache has the `KVCache` layout of `full` sharing (one
slot per prelude layer, per core layer and loop step, per coda layer: n_slots = Lp + Lc·T + Ld)
and L = the model's context_length columns; a query at position p attends to columns <= p, so
columns past the written ones are never read. Batch 1, no padding.

Why the loop is unrolled at a fixed T rather than an ONNX `Loop`: with `full` sharing every loop
step owns its own cache slots, so the number of slots (a dimension of the cache inputs) is a
function of T anyway, and a graph with a `Loop` would still be tied to one T through its cache
shape. Unrolled, the graph is static (every shape known but S), which is what runtimes optimise
best (constant folding, fusion, memory planning) and what mobile runtimes require; the cost is a
graph of T copies of the core (weights shared, so the file does not grow with T). Export one
file per depth you want to run; the depth is recorded in the file's metadata and checked when
it is loaded. Only `full` cache sharing is exported (the shared / ring / last modes reuse slots
across steps, which the unrolled graph could express, but no runtime caller needs them yet).

Exporter: `torch.onnx.export(..., dynamo=False)`, the TorchScript tracer, by default. The graph
is the model's own forward over the cache's fixed-shape mode (`parcae.model.decode`:
`FixedShapeCache`, the loop in lockstep), the mode the decode step runs: straight-line tensor
code for a fixed T, every shape known but S, the new columns written at `position` (a scatter
per slot) and attention over all L columns under the mask, so tracing captures it exactly, in
about 2 s for a tiny model; it lacks only `aten::rms_norm`, which `_rms_norm` below spells in
ONNX ops for the duration of the export. `exporter="dynamo"` (`torch.export` and onnxscript)
gives the same graph, logits within 1e-6 of each other, but takes ~10x longer.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from parcae.errors import ConfigError, MissingDependencyError
from parcae.model.base import LanguageModel, check_num_steps
from parcae.model.cache import CacheLayout, CacheSharing
from parcae.model.decode import FixedShapeCache
from parcae.outputs import write_atomic

OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
INPUTS = ("input_ids", "position", "keys", "values")
OUTPUTS = ("logits", "keys_out", "values_out")
FORMAT_VERSION = "1"
# Metadata keys written into the file (`parcae.<key>`) and read back by the runtime.
METADATA = ("format", "architecture", "num_steps", "vocab_size", "context_length", "n_slots")


def require_onnx(feature: str = "parcae export onnx"):
    """Import onnx, or raise one line naming the `onnx` extra."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx", feature, extra="onnx") from None
    return onnx


def num_slots(config, num_steps: int) -> int:
    """Cache slots of a `full`-sharing cache at loop depth T (a GPT ignores T)."""
    return CacheLayout.of(config, num_steps).n_slots


def cache_shape(config, num_steps: int) -> tuple[int, int, int, int, int]:
    """(n_slots, 1, Hkv, L, hd) of the exported graph's cache inputs."""
    return (
        num_slots(config, num_steps),
        1,
        config.n_kv_heads,
        config.context_length,
        config.head_dim,
    )


class ExportStep(nn.Module):
    """The model's forward at loop depth `num_steps` for one row over the cache's fixed-shape
    mode (`FixedShapeCache`), as a function of the cache: (input_ids (1, S), position (1,),
    keys, values) -> (logits (1, S, V), keys, values), the columns [position, position + S)
    of the cache written.

    Batch 1 without padding: the columns before `position` are the row's tokens, so `valid` is
    derived from `position` rather than being an input."""

    def __init__(self, model: LanguageModel, num_steps: int) -> None:
        super().__init__()
        self.model = model
        self.layout = CacheLayout.of(model.config, num_steps)
        table = model.eval_state_table() if model.config.is_looped else None
        self.register_buffer("state_table", table, persistent=False)

    def forward(
        self, input_ids: Tensor, position: Tensor, keys: Tensor, values: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        config = self.model.config
        valid = (torch.arange(config.context_length, device=position.device) < position)[None]
        positions = torch.zeros_like(valid, dtype=torch.long)
        cache = FixedShapeCache(
            self.layout,
            list(keys.unbind(0)),  # a slot at a time (see `FixedShapeSite`)
            list(values.unbind(0)),
            valid,
            positions,
            self.state_table,
            position,
        )
        logits = self.model(input_ids, cache=cache).logits[..., : config.vocab_size]
        return logits, torch.stack(cache.keys), torch.stack(cache.values)


def check_export_options(num_steps, cache_sharing: str | None, exporter: str) -> None:
    """Refuse a depth out of range, any cache sharing but `full` and an unknown exporter, in
    one line each."""
    check_num_steps(num_steps, "--num-steps")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    sharing = CacheSharing.parse(cache_sharing)
    if sharing.kind != "full":
        raise ConfigError(
            f"--cache-sharing {sharing}: only 'full' cache sharing can be exported to ONNX "
            f"(one cache slot per loop step)"
        )


def check_output_path(out: str | os.PathLike) -> Path:
    """OUT must end in .onnx, not be a directory, and its directory must exist."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a directory: give a file name ending in .onnx")
    if out.suffix != ".onnx":
        raise ConfigError(f"{out}: the output file must end in .onnx")
    parent = out.parent
    if not parent.exists():
        raise ConfigError(f"{out}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise ConfigError(f"{out}: {parent} is a file, not a directory")
    return out


def example_inputs(config, num_steps: int, prompt: list[int]) -> tuple[Tensor, ...]:
    shape = cache_shape(config, num_steps)
    return (
        torch.tensor([prompt], dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        torch.zeros(shape),
        torch.zeros(shape),
    )


@torch.no_grad()
def export_onnx(
    model: LanguageModel,
    out: str | os.PathLike,
    num_steps: int | None = None,
    cache_sharing: str | None = "full",
    exporter: str = "torchscript",
) -> Path:
    """Write `model` (float32, CPU) at loop depth `num_steps` (default its mean_recurrence) to
    the ONNX file `out` (module docstring); returns its path. Written to a temporary file beside
    it and renamed into place. exporter: `torchscript` or `dynamo` (module docstring)."""
    check_export_options(num_steps, cache_sharing, exporter)
    out = check_output_path(out)
    onnx = require_onnx()
    config = model.config
    if num_steps is None:
        num_steps = config.default_depth or 0
    model = model.float().cpu().eval()
    step = ExportStep(model, num_steps).eval()
    prompt = [i % config.vocab_size for i in range(1, 4)]
    with tempfile.TemporaryDirectory() as private:  # the exporter's file, in a 0700 directory
        temporary = Path(private) / out.name
        _export(step, example_inputs(config, num_steps, prompt), temporary, exporter)
        proto = onnx.load(str(temporary))
        metadata = {
            "format": FORMAT_VERSION,
            "architecture": type(model).__name__.lower(),
            "num_steps": str(step.layout.num_steps),
            "vocab_size": str(config.vocab_size),
            "context_length": str(config.context_length),
            "n_slots": str(num_slots(config, num_steps)),
        }
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"parcae.{key}", value
        proto.producer_name = "parcae"
    write_atomic(out, lambda handle: handle.write(proto.SerializeToString()))
    return out


def _rms_norm(g, x, shape, weight, eps):
    """ONNX for `aten::rms_norm` over the last dimension (the only one the model normalises):
    x / sqrt(mean(x², -1) + eps) * weight, eps defaulting to float32's like `F.rms_norm`."""
    from torch.onnx import symbolic_helper

    eps = symbolic_helper._maybe_get_const(eps, "f")
    if eps is None or symbolic_helper._is_value(eps):
        eps = torch.finfo(torch.float32).eps
    axes = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long))
    mean = g.op("ReduceMean", g.op("Mul", x, x), axes, keepdims_i=1)
    epsilon = g.op("Constant", value_t=torch.tensor(float(eps), dtype=torch.float32))
    y = g.op("Div", x, g.op("Sqrt", g.op("Add", mean, epsilon)))
    return y if symbolic_helper._is_none(weight) else g.op("Mul", y, weight)


def _export(step: ExportStep, inputs: tuple[Tensor, ...], path: Path, exporter: str) -> None:
    options = dict(
        input_names=list(INPUTS),
        output_names=list(OUTPUTS),
        dynamic_axes={"input_ids": {1: "sequence"}, "logits": {1: "sequence"}},
        opset_version=OPSET,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            require_onnx("parcae export onnx --exporter dynamo")
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise MissingDependencyError(
                    "onnxscript", "parcae export onnx --exporter dynamo", extra="onnx"
                ) from None
            torch.onnx.export(step, inputs, str(path), dynamo=True, verbose=False, **options)
            return
        torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, OPSET)
        try:
            torch.onnx.export(step, inputs, str(path), dynamo=False, **options)
        finally:
            torch.onnx.unregister_custom_op_symbolic("aten::rms_norm", OPSET)
