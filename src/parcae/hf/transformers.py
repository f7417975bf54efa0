"""Hugging Face transformers classes: `ParcaeHFConfig` and `ParcaeForCausalLM`.

Registered with `AutoConfig` / `AutoModelForCausalLM` under model_type "parcae" on `import parcae`
(see `parcae.hf.registration`). One wrapper serves both architectures (the config's
`architecture` field picks Parcae or GPT); the config class lives in `parcae.hf.configuration`.

Format: the wrapper's `config.json` is our native one (`architecture`, the config fields,
`parcae_format_version`) plus transformers' keys (model_type, architectures, ...), and its
weights are the native state dict under the prefix `model.`; `parcae.from_pretrained` reads such
a directory as it reads a native one. transformers' `generate()` runs on our KV cache
(`ParcaeCache`): greedy and sampling; beam search (which reorders caches) is not supported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from parcae.errors import MissingDependencyError, PromptError

try:
    from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerFast
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ModuleNotFoundError:
    raise MissingDependencyError("transformers", "parcae.hf (the transformers classes)") from None

from parcae.data.tokenizer import BOS, EOS, PAD, Tokenizer
from parcae.hf.configuration import ParcaeHFConfig
from parcae.model import KVCache, create_model, from_pretrained
from parcae.model.layers import rotary_tables

INITIAL_CACHE_COLUMNS = 256  # the cache grows by doubling beyond this


class ParcaeCache:
    """transformers' view of a `KVCache`: created on the first forward, grown as needed."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.cache.length


class ParcaeForCausalLM(PreTrainedModel, GenerationMixin):
    """A parcae model (`.model`, a `Parcae` or `GPT`) behind transformers' causal-LM interface.

    forward(input_ids, attention_mask=None, past_key_values=None, labels=None, use_cache=None,
    num_steps=None): labels are the inputs (shifted inside, as in transformers); attention_mask
    may left-pad; `num_steps` sets the loop depth T (default the config's mean recurrence).
    """

    config_class = ParcaeHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_cache_class = False

    def __init__(self, config: ParcaeHFConfig) -> None:
        super().__init__(config)
        # transformers builds models under a `meta` device context before loading weights
        self.model = create_model(config.to_parcae(), device=torch.empty(0).device)
        if config.tie_embeddings:
            self._tied_weights_keys = {"model.lm_head.weight": "model.transformer.wte.weight"}
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our own cache is returned by forward and handed back by generate

    @classmethod
    def from_parcae(cls, model) -> ParcaeForCausalLM:
        """Wrap (a copy of the weights of) a parcae model."""
        wrapper = cls(ParcaeHFConfig.from_parcae(model.config))
        wrapper.model.load_state_dict(model.state_dict())
        return wrapper.to(next(model.parameters()).device).eval()

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        """Only the derived rotary tables: `create_model` initialises a fresh model's weights
        and loading replaces them, but transformers materialises non-persistent buffers
        empty."""
        if module is self.model:
            config = module.config
            cos, sin = rotary_tables(
                config.head_dim,
                config.context_length,
                config.rope_theta,
                device=module.rope_cos.device,
            )
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values: ParcaeCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        num_steps: int | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if past_key_values is None and not use_cache and not padded:
            targets = None
            if labels is not None:
                targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
            out = self.model(input_ids, labels=targets, num_steps=num_steps)
            return CausalLMOutputWithPast(loss=out.loss, logits=out.logits)
        if labels is not None:
            raise PromptError("labels are only supported without a cache or padding")
        if past_key_values is None:
            past_key_values = self._new_cache(input_ids.shape[0], num_steps)
        seq = input_ids.shape[1]
        cache = past_key_values.cache
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask[:, -seq:].bool()
        )
        cache.reserve(seq)
        out = self.model(input_ids, cache=cache, attention_mask=valid)
        return CausalLMOutputWithPast(
            logits=out.logits, past_key_values=past_key_values if use_cache else None
        )

    def _new_cache(self, batch: int, num_steps: int | None) -> ParcaeCache:
        columns = min(INITIAL_CACHE_COLUMNS, self.model.config.context_length)
        return ParcaeCache(self.model.new_cache(batch, columns, num_steps))

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        past_key_values=None,
        attention_mask: Tensor | None = None,
        num_steps: int | None = None,
        **kwargs: Any,
    ) -> dict:
        """Feed only the tokens the cache has not seen."""
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.get_seq_length() :]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "past_key_values": past_key_values,
            "use_cache": kwargs.get("use_cache", True),
            "num_steps": num_steps,
        }


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Save our tokenizer as a transformers `PreTrainedTokenizerFast` (tokenizer.json plus
    tokenizer_config.json) in `path`; returns it."""
    fast = to_transformers_tokenizer(tokenizer)
    fast.save_pretrained(str(path))
    return fast


def to_transformers_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def convert_official(
    source: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None
) -> Path:
    """Convert an official checkpoint directory into one that `parcae.from_pretrained` and
    `AutoModelForCausalLM.from_pretrained` both load; optionally save a tokenizer with it."""
    model = from_pretrained(source)
    out = Path(out)
    ParcaeForCausalLM.from_parcae(model).save_pretrained(str(out))
    if tokenizer is not None:
        save_tokenizer(Tokenizer.load(tokenizer), out)
    return out
