"""Model configurations: one dataclass per architecture, validated in one place.

`GPTConfig` describes the fixed-depth baseline (`wte -> L blocks -> ln_f -> head`);
`ParcaeConfig` adds the looped structure (prelude / recurrent core / coda), the injection that
makes the loop a stable linear system, and how training samples the loop depth (ARCHITECTURE §1,
docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from parcae.errors import ConfigError
from parcae.model.official import fields_to_official, official_to_fields, restate_error
from parcae.values import is_number

INJECTIONS = ("diagonal", "linear", "add")
DISCRETIZATIONS = ("euler", "zoh")
STATE_INITS = ("zero", "like-init", "normal", "embed", "unit")
SAMPLING_SCHEMES = ("poisson-truncated-full", "poisson-full", "poisson", "fixed")
GRANULARITIES = ("per-batch", "per-sequence", "per-token")
CURRICULUM_TARGETS = ("forward", "backward", "both")
CURRICULUM_SHAPES = ("linear", "sqrt")
VALUE_EMBED_GATE_CHANNELS = 32


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"invalid config field '{field_name}': {message}", field_name, message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Upper bounds of the size fields, checked before anything is allocated (README, Guarantees).
MAX_NUM_STEPS = 1024  # loop depth: mean_recurrence, mean_backprop_depth, num_steps
UPPER_BOUNDS = {
    "vocab_size": 1 << 21,
    "padded_vocab_size": 1 << 21,
    "padding_multiple": 1 << 16,
    "context_length": 1 << 20,
    "d_model": 1 << 16,
    "ffn_dim": 1 << 18,
    "n_heads": 1 << 10,
    "n_kv_heads": 1 << 10,
    "n_layers": 1 << 10,
    "n_prelude": 1 << 10,
    "n_core": 1 << 10,
    "n_coda": 1 << 10,
    "mean_recurrence": MAX_NUM_STEPS,
    "mean_backprop_depth": MAX_NUM_STEPS,
    "curriculum_steps": 1 << 40,
}


def _require_count(config: Any, name: str, low: int, optional: bool = False) -> None:
    """config.name is an integer in [low, UPPER_BOUNDS[name]] (or None when `optional`)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    high = UPPER_BOUNDS[name]
    _require(
        _is_int(value) and low <= value <= high,
        name,
        f"must be an integer in [{low}, {high}], got {value!r}",
    )


def _require_bools(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        _require(isinstance(value, bool), name, f"must be true or false, got {value!r}")


def _require_choice(value: Any, field_name: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, field_name, f"{value!r} is not one of {', '.join(choices)}")


@dataclass
class TransformerConfig:
    """What every model shares: vocabulary, width, attention and block settings.

    Blocks are `x + Attn(RMSNorm(x))`, `x + MLP(RMSNorm(x))` with no biases; attention has
    interleaved RoPE, optional QK-norm, GQA and gated value embeddings (ARCHITECTURE
    §1.2-1.3).
    """

    architecture: ClassVar[str] = ""

    vocab_size: int = 32768
    padded_vocab_size: int | None = None  # rounded up to padding_multiple when None
    padding_multiple: int = 64
    context_length: int = 2048
    d_model: int = 768
    ffn_dim: int = 3072
    n_heads: int = 6
    n_kv_heads: int | None = None  # = n_heads when None
    rope_theta: float = 50000.0
    norm_eps: float = 1e-5
    qk_norm: bool = True
    value_embeddings: bool = True
    tie_embeddings: bool = True
    logit_softcap: float | None = None
    init_orthogonal: bool = False

    def __post_init__(self) -> None:
        self._validate_transformer()

    def _validate_transformer(self) -> None:
        for name in (
            "vocab_size",
            "padding_multiple",
            "context_length",
            "d_model",
            "ffn_dim",
            "n_heads",
        ):
            _require_count(self, name, 1)
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            _require(is_number(value), name, f"must be a number, got {value!r}")
        _require(
            self.logit_softcap is None or is_number(self.logit_softcap),
            "logit_softcap",
            f"must be a number or null, got {self.logit_softcap!r}",
        )
        _require_bools(self, ("qk_norm", "value_embeddings", "tie_embeddings", "init_orthogonal"))
        _require_count(self, "padded_vocab_size", 1, optional=True)
        _require_count(self, "n_kv_heads", 1, optional=True)
        if self.padded_vocab_size is None:
            multiple = self.padding_multiple
            self.padded_vocab_size = multiple * math.ceil(self.vocab_size / multiple)
        _require(
            self.padded_vocab_size >= self.vocab_size,
            "padded_vocab_size",
            f"{self.padded_vocab_size} is smaller than vocab_size {self.vocab_size}",
        )
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _require(
            self.d_model % self.n_heads == 0,
            "n_heads",
            f"{self.n_heads} heads do not divide d_model {self.d_model}",
        )
        _require(
            self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0,
            "n_kv_heads",
            f"{self.n_kv_heads} kv heads must be positive and divide n_heads {self.n_heads}",
        )
        _require(
            self.head_dim % 2 == 0,
            "n_heads",
            f"head dim {self.head_dim} must be even for rotary embeddings",
        )
        _require(
            0 < self.rope_theta < math.inf,
            "rope_theta",
            f"must be positive and finite, got {self.rope_theta}",
        )
        _require(
            0 < self.norm_eps < math.inf,
            "norm_eps",
            f"must be positive and finite, got {self.norm_eps}",
        )
        _require(
            self.logit_softcap is None or 0 < self.logit_softcap < math.inf,
            "logit_softcap",
            f"must be positive or None, got {self.logit_softcap}",
        )
        if self.value_embeddings:
            _require(
                self.d_model >= VALUE_EMBED_GATE_CHANNELS,
                "d_model",
                f"value-embedding gates read {VALUE_EMBED_GATE_CHANNELS} channels; "
                f"d_model {self.d_model} is too small (set value_embeddings=False)",
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def total_layers(self) -> int:
        """Distinct blocks (a looped core counts once)."""
        return len(self.prelude_layers) + len(self.core_layers) + len(self.coda_layers)

    @property
    def is_looped(self) -> bool:
        """Whether the model has a recurrent core (Parcae) or a fixed depth (GPT)."""
        return len(self.core_layers) > 0

    @property
    def default_depth(self) -> int | None:
        """The loop depth T a forward runs when none is asked (inference, evaluation, a cache):
        None for a fixed-depth model (GPT), which has no loop; μ_rec for a looped one
        (ARCHITECTURE §1.5)."""
        return None

    # Distinct layer indices 0..total_layers-1, in order: the blocks before the loop, the
    # recurrent core (applied T times) and the blocks after it. A GPT is all "prelude".
    @property
    def prelude_layers(self) -> range:
        raise NotImplementedError

    @property
    def core_layers(self) -> range:
        raise NotImplementedError

    @property
    def coda_layers(self) -> range:
        raise NotImplementedError

    def has_value_embedding(self, layer_index: int) -> bool:
        """Whether distinct layer `layer_index` owns a value-embedding table (ARCHITECTURE
        §1.3)."""
        return self.value_embeddings and layer_index % 2 == (self.total_layers - 1) % 2

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build from `to_dict()` output (the `architecture` key selects the class)."""
        data = dict(data)
        architecture = data.pop("architecture", cls.architecture)
        config_class = CONFIG_CLASSES.get(architecture) if isinstance(architecture, str) else None
        if config_class is None:
            raise ConfigError(
                f"invalid config field 'architecture': {architecture!r} is not one "
                f"of {', '.join(CONFIG_CLASSES)}"
            )
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) for {architecture}: {', '.join(unknown)}")
        try:
            return config_class(**data)
        except TypeError as error:
            raise ConfigError(f"invalid config: {error}") from None

    def replace(self, **overrides: Any) -> TransformerConfig:
        """A copy with `overrides` applied (unknown names are refused)."""
        return self.from_dict({**self.to_dict(), **overrides})


@dataclass
class GPTConfig(TransformerConfig):
    """The fixed-depth baseline: `wte -> n_layers blocks -> ln_f -> head`."""

    architecture: ClassVar[str] = "gpt"

    n_layers: int = 6

    def __post_init__(self) -> None:
        self._validate_transformer()
        _require_count(self, "n_layers", 1)

    @property
    def prelude_layers(self) -> range:
        return range(self.n_layers)

    @property
    def core_layers(self) -> range:
        return range(self.n_layers, self.n_layers)

    @property
    def coda_layers(self) -> range:
        return range(self.n_layers, self.n_layers)


@dataclass
class ParcaeConfig(TransformerConfig):
    """A looped transformer: prelude -> (inject, core) x T -> C -> coda -> head
    (ARCHITECTURE §1)."""

    architecture: ClassVar[str] = "parcae"

    n_prelude: int = 2
    n_core: int = 2
    n_coda: int = 2
    injection: str = "diagonal"
    discretization: str = "euler"  # how B is discretised (A always uses zero-order hold)
    prelude_norm: bool = True
    state_init: str = "like-init"
    mean_recurrence: int = 8
    mean_backprop_depth: int = 4
    sampling_scheme: str = "poisson-truncated-full"
    depth_granularity: str = "per-sequence"
    lockstep_no_grad: bool = False  # one no-grad depth for every row of a micro-batch
    lockstep_grad: bool = False  # one grad depth for every row of a micro-batch
    curriculum_steps: int = 0  # 0 disables the depth curriculum
    curriculum_target: str = "forward"
    curriculum_shape: str = "linear"
    state_init_seed: int = 0  # seed of the deterministic eval-mode state noise

    def __post_init__(self) -> None:
        self._validate_transformer()
        for name in ("n_prelude", "n_core", "n_coda", "curriculum_steps"):
            _require_count(self, name, 0)
        _require(self.n_core > 0, "n_core", "the recurrent block needs at least one layer")
        _require_count(self, "mean_recurrence", 1)
        _require_count(self, "mean_backprop_depth", 1)
        _require_bools(self, ("prelude_norm", "lockstep_no_grad", "lockstep_grad"))
        _require(
            _is_int(self.state_init_seed),
            "state_init_seed",
            f"must be an integer, got {self.state_init_seed!r}",
        )
        _require_choice(self.injection, "injection", INJECTIONS)
        _require_choice(self.discretization, "discretization", DISCRETIZATIONS)
        _require_choice(self.state_init, "state_init", STATE_INITS)
        _require_choice(self.sampling_scheme, "sampling_scheme", SAMPLING_SCHEMES)
        _require_choice(self.depth_granularity, "depth_granularity", GRANULARITIES)
        _require_choice(self.curriculum_target, "curriculum_target", CURRICULUM_TARGETS)
        _require_choice(self.curriculum_shape, "curriculum_shape", CURRICULUM_SHAPES)

    @property
    def default_depth(self) -> int:
        return self.mean_recurrence

    @property
    def prelude_layers(self) -> range:
        return range(self.n_prelude)

    @property
    def core_layers(self) -> range:
        return range(self.n_prelude, self.n_prelude + self.n_core)

    @property
    def coda_layers(self) -> range:
        first_coda = self.n_prelude + self.n_core
        return range(first_coda, first_coda + self.n_coda)

    @classmethod
    def from_official(cls, data: dict[str, Any]) -> ParcaeConfig:
        """From the official implementation's `config.json` dict (see `parcae.model.official`);
        a value we cannot honour is refused under its official field name."""
        fields = official_to_fields(data)
        try:
            return cls(**fields)
        except ConfigError as error:
            raise restate_error(error, data) from None

    def to_official(self) -> dict[str, Any]:
        """The official `config.json` dict for this config."""
        return fields_to_official(self.to_dict())


CONFIG_CLASSES: dict[str, type[TransformerConfig]] = {"gpt": GPTConfig, "parcae": ParcaeConfig}
