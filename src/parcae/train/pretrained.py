"""Fine-tuning: the model a run starts from (`init_from`), with its config, tokenizer and chat
template.

The run takes the model's own config, with `model_overrides` applied where they keep every
weight's shape (a loop depth, the sampling scheme, a softcap...); an override that changes a
shape is refused by its name, before any weight is read. The data must be tokenised with the
model's tokenizer (`parcae.train.data`). Weights are copied into the freshly built training
model; the optimizer and the schedule start fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from parcae.data.chat_template import ChatTemplate
from parcae.data.tokenizer import Tokenizer
from parcae.errors import ConfigError
from parcae.infer.loading import find_tokenizer
from parcae.model import create_model, from_pretrained
from parcae.model.config import TransformerConfig
from parcae.model.hub import resolve_model_dir
from parcae.model.serialization import read_config


def model_directory(reference: str) -> Path:
    """The local directory holding the model `reference` names (a model or run directory, or a
    Hub repo `org/name[@revision]`); the one place a training config's model is resolved."""
    return resolve_model_dir(reference)


@dataclass
class Pretrained:
    """The model a fine-tuning run starts from: its directory, config, tokenizer and chat
    template (the plain one when it has none)."""

    directory: Path
    config: TransformerConfig
    tokenizer: Tokenizer
    chat_template: ChatTemplate

    @classmethod
    def find(cls, reference: str) -> Pretrained:
        directory = model_directory(reference)
        tokenizer = find_tokenizer(directory)
        if tokenizer is None:
            raise ConfigError(
                f"init_from {reference}: no tokenizer.json beside the model; fine-tuning "
                "tokenises the data with the model's own tokenizer"
            )
        template = ChatTemplate.find(directory, directory.parent)
        return cls(directory, read_config(directory), tokenizer, template)

    def run_config(self, overrides: dict) -> TransformerConfig:
        """The model's config with `overrides`; ConfigError naming the first override that
        changes a weight's shape (compared on the meta device: nothing is allocated)."""
        config = self.config.replace(**overrides)
        original = _shapes(self.config)
        for name, value in overrides.items():
            changed = _shapes(self.config.replace(**{name: value}))
            if changed != original:
                key = next(
                    k for k in original.keys() | changed.keys() if original.get(k) != changed.get(k)
                )
                raise ConfigError(
                    f"invalid training config 'model_overrides.{name}': {value!r} changes the "
                    f"weights of {self.directory} ({key}: {_shape(original.get(key))} -> "
                    f"{_shape(changed.get(key))}); fine-tuning keeps the model's shapes"
                )
        return config

    def load_into(self, model: nn.Module) -> None:
        """Copy the model's weights into `model` (same shapes, checked strictly)."""
        model.load_state_dict(from_pretrained(self.directory).state_dict())


def _shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = create_model(config, "meta")
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else "×".join(map(str, shape)) or "scalar"
