"""The training configuration: one dataclass, read from YAML plus dotted `key=value` overrides.

    parcae train run.yaml lr=0.01 model_overrides.d_model=128 eval_depths=[1,4]

Values are parsed as YAML (`true`, `1e-3`, `[1, 2]`), with booleans spelled `true`/`false` only
(YAML 1.2: `yes`, `no`, `on` stay strings, so `resume=nope` is refused, not read as true); a
dotted key sets one entry of a dict field. Unknown keys are refused with the closest valid names.
Numbers must be finite. Every check lives in `TrainConfig.__post_init__`; the resolved config is
written to `OUT_DIR/config.yaml`.

Fine-tuning (`init_from=MODEL`, `parcae.train.pretrained`) starts from a model's weights with a
fresh optimizer and schedule; `load_config` then starts from `FINETUNE_DEFAULTS` instead of the
pretraining defaults (a tenth of the learning rates, no weight decay, 100 steps unless another
budget is given), and a YAML file or override still sets any of them.

    parcae train init_from=runs/base/model data=my_corpus.txt
    parcae train init_from=runs/base/model data=sft:chats.jsonl      # chat tuning
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parcae.data.sft import PREFIX as SFT_PREFIX
from parcae.data.tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
from parcae.errors import ConfigError
from parcae.outputs import write_text_atomic
from parcae.values import is_finite_number, read_yaml

OPTIMIZERS = ("muon", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")
PARALLEL = ("ddp", "fsdp")
DEFAULT_MAX_STEPS = 270
BUDGET_KEYS = ("max_steps", "max_tokens", "max_flops", "tokens_per_param")
TEXTS = ("model", "data", "out_dir", "device", "wandb_project", "sample_prompt")
FINETUNE_DEFAULTS = {
    "lr": 0.002,
    "adam_lr": 0.0006,
    "weight_decay": 0.0,
    "max_steps": 100,  # only when no other budget key is given
    "out_dir": "runs/finetune",
}
SWITCHES = ("compile", "activation_checkpointing", "resume", "progress", "tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the embedded default run (README)."""

    # model: a preset name (`parcae presets`) and field overrides (vocab_size is the
    # tokenizer's and is set automatically)
    model: str = "parcae-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # fine-tuning: a model or run directory whose weights, config and tokenizer the run starts
    # from (`model` is then not read; model_overrides may change only fields that keep every
    # weight's shape, e.g. mean_recurrence)
    init_from: str | None = None
    # data: a recipe ("shakespeare"), a corpus (file, directory, hf:NAME) or a prepared
    # directory (holding manifest.json); corpora are tokenised once into `data_dir`; with
    # init_from, `sft:FILE.jsonl` chat-tunes on conversations (parcae.data.sft)
    data: str = "shakespeare"
    data_dir: str | None = None  # default: $PARCAE_CACHE/prepared/<name>-v<vocab_size>
    vocab_size: int = 4096  # of the tokenizer trained when `data` is not prepared yet
    val_fraction: float = 0.05
    out_dir: str = "runs/parcae-tiny"
    seed: int = 0
    # budget: training stops at the first one reached; none given = DEFAULT_MAX_STEPS
    max_steps: int | None = None
    max_tokens: int | None = None
    max_flops: float | None = None
    tokens_per_param: float | None = None
    # batch: `batch_size` sequences per optimizer step over all processes (the global batch,
    # whatever the number of processes); each process runs micro-batches of `micro_batch_size`
    batch_size: int = 12
    micro_batch_size: int | None = None  # default: the whole per-process batch at once
    seq_len: int = 256
    # optimizer (ARCHITECTURE §4)
    optimizer: str = "muon"
    lr: float = 0.02  # Muon lr (or the AdamW lr of matrices with optimizer=adamw)
    adam_lr: float = 0.006  # embeddings, head, norms, injection and C
    adam_betas: tuple[float, float] = (0.8, 0.95)
    adam_eps: float = 1e-10
    weight_decay: float = 0.2  # Muon (cautious) or AdamW matrices; decays linearly to 0
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    ns_steps: int = 5
    grad_clip: float = 1.0  # global grad-norm clip; 0 disables
    # schedule: linear warmup, constant, linear decay to final_lr_fraction over decay_fraction
    warmup_steps: int = 10
    decay_fraction: float = 0.5
    final_lr_fraction: float = 0.0
    # several processes (torchrun): replicated model (ddp) or FSDP2-sharded (fsdp)
    parallel: str = "ddp"
    # numerics
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "auto"  # auto: bf16 autocast where bf16 is fast, else fp32
    compile: bool = False
    activation_checkpointing: bool = False
    # evaluation
    eval_every: int = 100
    eval_batches: int | None = 4  # per depth during training; None = the whole val split
    eval_batch_size: int = 16
    eval_depths: list[int] | None = None  # default: 1, 2, 4, μ_rec (a GPT: its own depth)
    final_eval_batches: int | None = None
    # checkpoints
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    # logging
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "parcae"
    # the sample printed at the end
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 48
    sample_temperature: float = 0.8

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        _choice(self.optimizer, "optimizer", OPTIMIZERS)
        _choice(self.precision, "precision", PRECISIONS)
        _choice(self.parallel, "parallel", PARALLEL)
        for name in TEXTS:
            value = getattr(self, name)
            _check(
                isinstance(value, str) and (value != "" or name == "sample_prompt"),
                name,
                f"must be a {'' if name == 'sample_prompt' else 'non-empty '}string, got {value!r}",
            )
        _check(
            self.init_from is None or (isinstance(self.init_from, str) and self.init_from),
            "init_from",
            f"must be a model or run directory, got {self.init_from!r}",
        )
        _check(
            not self.data.startswith(SFT_PREFIX) or self.init_from is not None,
            "data",
            f"{self.data!r}: chat tuning starts from a model; set init_from=MODEL_DIR",
        )
        _check(
            self.data_dir is None or (isinstance(self.data_dir, str) and self.data_dir),
            "data_dir",
            f"must be a directory path, got {self.data_dir!r}",
        )
        for name in SWITCHES:
            value = getattr(self, name)
            _check(isinstance(value, bool), name, f"must be true or false, got {value!r}")
        for name in (
            "batch_size",
            "seq_len",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "eval_batch_size",
            "ns_steps",
            "vocab_size",
        ):
            _positive_int(getattr(self, name), name)
        for name in (
            "micro_batch_size",
            "max_steps",
            "max_tokens",
            "eval_batches",
            "final_eval_batches",
        ):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)
        for name in ("warmup_steps", "muon_momentum_warmup_steps", "sample_tokens", "seed"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                name,
                f"must be a non-negative integer, got {value!r}",
            )
        for name in ("max_flops", "tokens_per_param"):
            value = getattr(self, name)
            _check(
                value is None or (is_finite_number(value) and value > 0),
                name,
                f"must be a positive number, got {value!r}",
            )
        _check(
            MIN_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE,
            "vocab_size",
            f"must be between {MIN_VOCAB_SIZE} and {MAX_VOCAB_SIZE:,}, got {self.vocab_size:,}",
        )
        if all(getattr(self, key) is None for key in BUDGET_KEYS):
            self.max_steps = DEFAULT_MAX_STEPS
        for name in ("lr", "adam_lr", "adam_eps"):
            value = getattr(self, name)
            _check(
                is_finite_number(value) and value > 0,
                name,
                f"must be a positive number, got {value!r}",
            )
        for name in ("weight_decay", "grad_clip", "sample_temperature"):
            value = getattr(self, name)
            _check(is_finite_number(value) and value >= 0, name, f"must be >= 0, got {value!r}")
        for name in ("decay_fraction", "final_lr_fraction", "muon_momentum", "muon_momentum_start"):
            value = getattr(self, name)
            _check(
                is_finite_number(value) and 0 <= value <= 1,
                name,
                f"must be in [0, 1], got {value!r}",
            )
        _check(
            is_finite_number(self.val_fraction) and 0 < self.val_fraction < 1,
            "val_fraction",
            f"must be in (0, 1), got {self.val_fraction!r}",
        )
        _check(
            isinstance(self.adam_betas, tuple)
            and len(self.adam_betas) == 2
            and all(is_finite_number(b) and 0 <= b < 1 for b in self.adam_betas),
            "adam_betas",
            f"must be two numbers in [0, 1), got {self.adam_betas!r}",
        )
        _check(
            isinstance(self.model_overrides, dict),
            "model_overrides",
            f"must be a mapping of model config fields, got {self.model_overrides!r}",
        )
        if self.eval_depths is not None:
            _check(
                isinstance(self.eval_depths, list)
                and len(self.eval_depths) > 0
                and all(isinstance(t, int) and t > 0 for t in self.eval_depths),
                "eval_depths",
                f"must be a list of positive integers, got {self.eval_depths!r}",
            )
        if self.micro_batch_size is not None:
            _check(
                self.batch_size % self.micro_batch_size == 0,
                "micro_batch_size",
                f"{self.micro_batch_size} does not divide batch_size {self.batch_size}",
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = [key for key in data if key not in FIELDS]
        if unknown:
            raise ConfigError(_unknown_key_message(unknown[0]))
        data = {key: _as_number(key, value) for key, value in data.items()}
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"invalid training config: {error}") from None

    def save(self, path: Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _as_number(key: str, value: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string: read it as a number where the field is numeric."""
    annotation = str(FIELDS[key].type)
    if isinstance(value, str) and ("float" in annotation or "int" in annotation):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if "int" in annotation and number.is_integer() else number
    return value


def _check(condition: bool, name: str, reason: str) -> None:
    if not condition:
        raise ConfigError(f"invalid training config '{name}': {reason}", name, reason)


# Upper bounds of the counts a user types (README, Guarantees); the model's sizes are bounded
# by `parcae.model.config.UPPER_BOUNDS`, flops by the step count they imply.
MAX_BATCH = 1 << 16  # batch_size, micro_batch_size, eval_batch_size (sequences)
MAX_STEPS = 1 << 40  # max_steps, max_tokens, eval/checkpoint/log periods, eval batches
MAX_NS_STEPS = 100  # Newton-Schulz iterations of Muon
UPPER_BOUNDS = {
    "batch_size": MAX_BATCH,
    "micro_batch_size": MAX_BATCH,
    "eval_batch_size": MAX_BATCH,
    "ns_steps": MAX_NS_STEPS,
}


def _positive_int(value: Any, name: str) -> None:
    high = UPPER_BOUNDS.get(name, MAX_STEPS)
    _check(
        isinstance(value, int) and not isinstance(value, bool) and 0 < value <= high,
        name,
        f"must be a positive integer (at most {high:,}), got {value!r}",
    )


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, f"{value!r} is not one of {', '.join(choices)}")


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=3, cutoff=0.5)
    hint = (
        f"; did you mean {', '.join(close[:-1]) + ' or ' if len(close) > 1 else ''}{close[-1]}?"
        if close
        else f"; valid keys: {', '.join(FIELDS)}"
    )
    return f"unknown training config key {key!r}{hint}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], yaml-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected key=value, got {text!r}")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `data[path[0]][path[1]]... = value`, refusing unknown top-level keys."""
    if path[0] not in FIELDS:
        raise ConfigError(_unknown_key_message(path[0]))
    if len(path) > 1:
        default = (
            FIELDS[path[0]].default_factory
            if FIELDS[path[0]].default_factory is not dataclasses.MISSING
            else None
        )
        if default is None:
            raise ConfigError(
                f"training config key {path[0]!r} is not a mapping; write {path[0]}=VALUE"
            )
        node = data.setdefault(path[0], default())
        for part in path[1:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    else:
        data[path[0]] = value


def merge_overrides(config: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`config` (TrainConfig keys) with `overrides` over it, mappings (model_overrides) merged
    key by key."""
    data = dict(config)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            value = {**data[key], **value}
        data[key] = value
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """The defaults, updated by the YAML file at `path` (if any), then by `overrides`."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        try:
            loaded = read_yaml(path.read_bytes())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of training config keys")
        for key, value in (loaded or {}).items():
            apply_override(data, [str(key)], value)
    for text in overrides:
        apply_override(data, *parse_override(text))
    if data.get("init_from") is not None:
        defaults = dict(FINETUNE_DEFAULTS)
        if any(data.get(key) is not None for key in BUDGET_KEYS):
            del defaults["max_steps"]
        data = {**defaults, **data}
    return TrainConfig.from_dict(data)
