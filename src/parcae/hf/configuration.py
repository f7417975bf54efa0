"""`ParcaeHFConfig`: a transformers config holding a parcae config (model_type "parcae").

Its `config.json` is our native one (`architecture`, the config fields, `parcae_format_version`)
plus transformers' own keys, so `parcae.from_pretrained` reads it too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from parcae.errors import MissingDependencyError

try:
    from transformers import PretrainedConfig
except ModuleNotFoundError:
    raise MissingDependencyError("transformers", "parcae.hf (the transformers classes)") from None

from parcae.model.config import CONFIG_CLASSES, TransformerConfig
from parcae.model.serialization import FORMAT_VERSION

MODEL_TYPE = "parcae"


class ParcaeHFConfig(PretrainedConfig):
    """A transformers config holding a parcae `TransformerConfig`'s fields as attributes."""

    model_type = MODEL_TYPE

    def __init__(self, architecture: str = "parcae", **kwargs: Any) -> None:
        config_class = CONFIG_CLASSES.get(architecture, CONFIG_CLASSES["parcae"])
        names = [field.name for field in dataclasses.fields(config_class)]
        fields = {name: kwargs.pop(name) for name in names if name in kwargs}
        kwargs.pop("parcae_format_version", None)
        parcae_config = TransformerConfig.from_dict({"architecture": architecture, **fields})
        self.architecture = architecture
        for name, value in dataclasses.asdict(parcae_config).items():
            setattr(self, name, value)
        self.parcae_format_version = FORMAT_VERSION
        kwargs.setdefault("tie_word_embeddings", parcae_config.tie_embeddings)
        use_cache = kwargs.pop("use_cache", True)  # transformers 5 no longer keeps it
        super().__init__(**kwargs)
        self.use_cache = use_cache

    def to_parcae(self) -> TransformerConfig:
        """Our config, from this config's fields."""
        config_class = CONFIG_CLASSES[self.architecture]
        fields = {
            field.name: getattr(self, field.name) for field in dataclasses.fields(config_class)
        }
        return TransformerConfig.from_dict({"architecture": self.architecture, **fields})

    @classmethod
    def from_parcae(cls, config: TransformerConfig, **kwargs: Any) -> ParcaeHFConfig:
        return cls(**config.to_dict(), **kwargs)
