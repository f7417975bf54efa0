"""The official implementation's `config.json` (ARCHITECTURE §3) mapped to and from our config
fields: plain dicts in both directions, so that `parcae.model.config` builds on this module and
this module knows nothing of the config classes.

The official file is a flat dump of its config dataclass. We accept exactly the values whose
math we implement and refuse every other value by field name, rather than loading a model that
silently computes something else. Fields that only choose an implementation (attention kernel,
activation checkpointing, distributed strategy, fused head, initial-weight recipe) do not change
what a checkpoint computes and are ignored.

    fields = official_to_fields(data)      # official config.json -> ParcaeConfig(**fields)
    data = fields_to_official(fields)      # ParcaeConfig.to_dict() -> official config.json
"""

from __future__ import annotations

from typing import Any

from parcae.errors import ConfigError

# official field -> our field, for values copied as they are
RENAMED = {
    "block_size": "context_length",
    "n_embd": "d_model",
    "intermediate_size": "ffn_dim",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "vocab_size": "vocab_size",
    "padding_multiple": "padding_multiple",
    "padded_vocab_size": "padded_vocab_size",
    "norm_eps": "norm_eps",
    "qk_norm": "qk_norm",
    "logit_softcap": "logit_softcap",
    "tie_embeddings": "tie_embeddings",
    "init_orthogonal": "init_orthogonal",
    "injection_type": "injection",
    "n_layers_in_prelude": "n_prelude",
    "n_layers_in_recurrent_block": "n_core",
    "n_layers_in_coda": "n_coda",
    "state_init": "state_init",
    "prelude_norm": "prelude_norm",
    "sampling_scheme": "sampling_scheme",
    "mean_recurrence": "mean_recurrence",
    "mean_backprop_depth": "mean_backprop_depth",
    "recurrent_iteration_method": "depth_granularity",
    "lockstep_n": "lockstep_no_grad",
    "lockstep_k": "lockstep_grad",
    "curriculum_target": "curriculum_target",
}

# official field -> the only value(s) whose math we implement
FIXED = {
    "_class_name": ("ParcaeConfig",),  # written by the released models' save_pretrained
    "model_class_name": ("Parcae",),
    "use_abacus": (False,),
    "randomize_positions_from": (None,),
    "block_class_name": ("TransformerPreNormBlock",),
    "norm_class_name": ("RMSNorm",),
    "mlp_class_name": ("BaseMLP",),
    "nonlin_name": ("ReLU2",),
    "bias": (False,),
    "qk_bias": (False,),
    "debias_attention": (False,),
    "center_attention": (False,),
    "clip_qkv": (None,),
    "mup_model_scaling_factor": (1, 1.0),
    "recurrent_num_attention_heads": (None,),
}

# fields that choose an implementation or an initial-weight recipe, not what a model computes
IGNORED = {
    "name",
    "hf_config",
    "attn_impl",
    "init_strategy",
    "skip_initialization",
    "use_fused_head",
    "activation_checkpoint_impl",
    "simple_ops",
    "strategy",
    "_is_recurrent_block_config",
}

ROPE_DEFAULTS = {"use_rope": True, "rope_condense_ratio": 1}


def _refuse(field_name: str, value: Any, reason: str) -> ConfigError:
    return ConfigError(f"official config field '{field_name}' = {value!r}: {reason}")


def official_to_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our config fields for an official `config.json` dict, refusing what we cannot honour."""
    if not isinstance(data, dict):
        raise ConfigError(f"official config must be a JSON object, got {type(data).__name__}")
    known = (
        set(RENAMED)
        | set(FIXED)
        | IGNORED
        | {
            "rope_settings",
            "recurrent_embedding_dimension",
            "recurrent_intermediation_embedding_dimension",
        }
    )
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"official config has field(s) this version cannot honour: {', '.join(unknown)}"
        )
    for name, allowed in FIXED.items():
        if name in data and data[name] not in allowed:
            raise _refuse(name, data[name], f"only {allowed[0]!r} is supported")

    rope = data.get("rope_settings") or {}
    for name, allowed in ROPE_DEFAULTS.items():
        if rope.get(name, allowed) != allowed:
            raise _refuse(f"rope_settings.{name}", rope[name], f"only {allowed!r} is supported")
    fields: dict[str, Any] = {
        ours: data[theirs] for theirs, ours in RENAMED.items() if theirs in data
    }
    if "rope_base" in rope:
        fields["rope_theta"] = float(rope["rope_base"])

    width, ffn = data.get("n_embd"), data.get("intermediate_size")
    for name, expected in (
        ("recurrent_embedding_dimension", width),
        ("recurrent_intermediation_embedding_dimension", ffn),
    ):
        if data.get(name) not in (None, expected):
            raise _refuse(
                name,
                data[name],
                f"a recurrent width different from the model's ({expected}) is not supported",
            )
    return fields


def restate_error(error: ConfigError, data: dict[str, Any]) -> ConfigError:
    """`error`, raised by our config for the fields of official `data`, restated under the
    official field name when one official field is at fault (else `error` itself)."""
    theirs = {ours: theirs for theirs, ours in RENAMED.items()}.get(error.field)
    if theirs is None or theirs not in data:
        return error
    return _refuse(theirs, data[theirs], error.reason)


def fields_to_official(fields: dict[str, Any]) -> dict[str, Any]:
    """The official `config.json` dict for a Parcae config's fields (`ParcaeConfig.to_dict()`;
    inverse of `official_to_fields`)."""
    if fields.get("architecture") != "parcae":
        raise ConfigError("only Parcae models have an official config format")
    inexpressible = {
        "discretization": (fields["discretization"], "euler"),
        "value_embeddings": (fields["value_embeddings"], True),
        "curriculum_steps": (fields["curriculum_steps"], 0),
    }
    for name, (value, required) in inexpressible.items():
        if value != required:
            raise ConfigError(
                f"config field '{name}' = {value!r} has no official equivalent "
                f"(the official format requires {required!r})"
            )
    data: dict[str, Any] = {"name": "parcae", "hf_config": {}}
    data.update({theirs: fields[ours] for theirs, ours in RENAMED.items()})
    data["rope_settings"] = {**ROPE_DEFAULTS, "rope_base": fields["rope_theta"]}
    data.update({name: allowed[0] for name, allowed in FIXED.items()})
    data["recurrent_embedding_dimension"] = fields["d_model"]
    data["recurrent_intermediation_embedding_dimension"] = fields["ffn_dim"]
    data.update(
        init_strategy="scaled-zero",
        attn_impl="sdpa",
        skip_initialization=False,
        use_fused_head="pytorch",
        activation_checkpoint_impl="per-iteration",
        simple_ops=False,
        strategy="single",
        _is_recurrent_block_config=False,
    )
    return data
