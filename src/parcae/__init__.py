"""parcae: stable looped language models (Parcae, arXiv 2604.12946) and their baselines."""

from parcae.errors import CheckpointError, ConfigError, DataError, ParcaeError, PromptError
from parcae.hf.registration import register_with_transformers
from parcae.infer.generate import generate
from parcae.model import (
    GPT,
    CausalLMOutput,
    DepthPlan,
    GPTConfig,
    Parcae,
    ParcaeConfig,
    TransformerConfig,
    create_model,
    from_pretrained,
    list_presets,
    preset_config,
    save_pretrained,
)
from parcae.quant import register as register_quantized_format

register_with_transformers()  # AutoConfig / AutoModelForCausalLM, once transformers loads them
register_quantized_format()  # save_pretrained / from_pretrained of `parcae quantize`'s models

__version__ = "0.1.0"


def __getattr__(name: str):
    """`parcae.Tokenizer` (text <-> ids) and `parcae.load_tokenizer(ref)` (a model's tokenizer),
    imported on first use: `tokenizers` is not light."""
    if name == "Tokenizer":
        from parcae.data.tokenizer import Tokenizer

        return Tokenizer
    if name == "load_tokenizer":
        from parcae.infer.loading import load_tokenizer

        return load_tokenizer
    raise AttributeError(f"module 'parcae' has no attribute {name!r}")


__all__ = [
    "GPT",
    "CausalLMOutput",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DepthPlan",
    "GPTConfig",
    "Parcae",
    "ParcaeConfig",
    "ParcaeError",
    "PromptError",
    "Tokenizer",
    "TransformerConfig",
    "create_model",
    "from_pretrained",
    "generate",
    "list_presets",
    "load_tokenizer",
    "preset_config",
    "save_pretrained",
]
