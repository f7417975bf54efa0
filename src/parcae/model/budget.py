"""What a model costs: parameters by stage and FLOPs per token (`parcae flops`, ARCHITECTURE §6).

Stages: token embeddings, value embeddings (lookups: no FLOPs), prelude, core (shared, run T
times), coda, injection and C (looped models), LM head (shared with the token table when tied),
and norms. FLOPs per token come from `parcae.model.flops`: training (forward + backward, the
expected depth over the sampler) and a forward at each test-time depth T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from parcae.errors import ConfigError
from parcae.model.config import TransformerConfig
from parcae.model.flops import expected_depth, forward_flops_per_token, training_flops_per_token
from parcae.values import read_yaml


@dataclass
class Budget:
    """Parameters by stage, total, and FLOPs per token (training; forward per depth)."""

    params: dict[str, int]
    total_params: int
    train_flops: float
    forward_flops: dict[int | None, float]
    expected_steps: tuple[float, float] | None  # E[n] (no grad), E[k] (grad)

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "total_params": self.total_params,
            "train_flops_per_token": self.train_flops,
            "forward_flops_per_token": {
                "fixed" if t is None else str(t): v for t, v in self.forward_flops.items()
            },
            "expected_steps": self.expected_steps,
        }


def model_config(spec: str, overrides: list[str]) -> TransformerConfig:
    """A preset name or a model directory (with config.json), plus `key=value` field
    overrides (values parsed as YAML scalars)."""
    from parcae.model import list_presets, preset_config
    from parcae.model.hub import is_hub_name, resolve_model_dir
    from parcae.model.serialization import read_config

    fields = {}
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {text!r}")
        try:
            fields[key] = read_yaml(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(f"{text!r}: the value is not a YAML scalar ({problem})") from None
    if spec in list_presets():
        return preset_config(spec, **fields)
    path = Path(spec)
    if not path.exists() and is_hub_name(spec):
        path = resolve_model_dir(spec, weights=False)  # the config (and tokenizer) only
    if not path.exists():
        raise ConfigError(
            f"{spec!r} is neither a preset ({', '.join(list_presets())}) nor a model directory"
        )
    config = read_config(path if path.is_dir() else path.parent)
    return TransformerConfig.from_dict({**config.to_dict(), **fields}) if fields else config


def _stage_params(model) -> dict[str, int]:
    config = model.config
    blocks = model.blocks()

    def count(modules) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    def stage(layers: range) -> int:
        return count(blocks[layers.start : layers.stop])

    t = model.transformer
    params = {
        "embeddings": t.wte.weight.numel(),
        "value_embeddings": count(model.value_embeds.values()),
    }
    if config.is_looped:
        params["prelude"] = stage(config.prelude_layers)
        params["core"] = stage(config.core_layers)
        params["coda"] = stage(config.coda_layers)
        params["injection"] = count([t.adapter])
        params["C"] = t.C.weight.numel()
    else:
        params["blocks"] = count(blocks)
    params["head"] = 0 if config.tie_embeddings else model.lm_head.weight.numel()
    params["norms"] = model.num_params() - sum(params.values())
    return params


def model_budget(config: TransformerConfig, seq_len: int, depths: list[int]) -> Budget:
    """Parameters by stage (built on the meta device) and FLOPs per token at `seq_len`."""
    from parcae.model import create_model

    with torch.device("meta"):
        model = create_model(config)
    params = _stage_params(model)
    looped = config.is_looped
    forward = {t: forward_flops_per_token(config, seq_len, t) for t in depths} if looped else {}
    if not looped:
        forward = {None: forward_flops_per_token(config, seq_len)}
    steps = None
    if looped:
        depth = expected_depth(config)
        steps = (depth.no_grad, depth.grad)
    return Budget(
        params=params,
        total_params=model.num_params(),
        train_flops=training_flops_per_token(config, seq_len),
        forward_flops=forward,
        expected_steps=steps,
    )


def format_budget(name: str, config: TransformerConfig, seq_len: int, budget: Budget) -> str:
    lines = [f"{name}: {budget.total_params:,d} parameters; FLOPs per token at sequence {seq_len}"]
    for stage, count in budget.params.items():
        note = " (run T times)" if stage == "core" else ""
        if stage == "head" and config.tie_embeddings:
            note = " (tied to the embeddings)"
        lines.append(f"  {stage:<18}{count:>15,d}{note}")
    lines.append(f"  training          {budget.train_flops / 1e6:>15,.2f} MFLOPs/token (fwd+bwd)")
    if budget.expected_steps is not None:
        n, k = budget.expected_steps
        lines.append(
            f"  {'':<18}at the sampler's expected steps: E[n] = {n:.3f} without, "
            f"E[k] = {k:.3f} with gradient (μ_rec = {config.mean_recurrence})"
        )
    for depth, flops in budget.forward_flops.items():
        label = "forward" if depth is None else f"forward at T={depth}"
        lines.append(f"  {label:<18}{flops / 1e6:>15,.2f} MFLOPs/token")
    return "\n".join(lines)
