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

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors
from torch import Tensor

from parcae.errors import CheckpointError, DataError, MissingDependencyError, PromptError
from parcae.quant.schemes import quiet_torchao_import

try:
    with quiet_torchao_import():  # transformers imports torchao when it is installed
        from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerFast
        from transformers.modeling_outputs import CausalLMOutputWithPast
        from transformers.utils import logging as hf_logging
except ModuleNotFoundError:
    raise MissingDependencyError("transformers", "parcae.hf (the transformers classes)") from None

from parcae.data.tokenizer import Tokenizer
from parcae.hf.configuration import ParcaeHFConfig
from parcae.model import KVCache, create_model, from_pretrained
from parcae.model.hub import is_hub_name, resolve_model_dir
from parcae.model.layers import rotary_tables
from parcae.model.serialization import read_config
from parcae.outputs import staged_directory

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

    logits: (B, S, V), the true vocabulary V = config.vocab_size: the model's V_pad - V padding
    columns are cut off, since transformers' sampling, argmax and pipelines choose over every
    column and those ids have no token. loss: the native model's (its softmax spans V_pad, as
    in training), so it equals parcae's own loss.
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
            return CausalLMOutputWithPast(loss=out.loss, logits=self._true_vocab(out.logits))
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
            logits=self._true_vocab(out.logits),
            past_key_values=past_key_values if use_cache else None,
        )

    def _true_vocab(self, logits: Tensor) -> Tensor:
        """(B, S, V_pad) -> (B, S, V): only the columns of real tokens."""
        return logits[..., : self.model.config.vocab_size]

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
    """Our tokenizer as transformers' fast tokenizer, with the BOS rule of
    `Tokenizer.encode_prompt`: encoding a text (`add_special_tokens=True`, transformers'
    default) puts BOS first, so `model.generate(**tok(text))` continues what `parcae generate`
    continues. The special-token names and chat template are the tokenizer's."""
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    bos = tokenizer.special_names["bos"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=tokenizer.special_names["eos"],
        pad_token=tokenizer.special_names["pad"],
    )
    if tokenizer.chat_template is not None:
        fast.chat_template = tokenizer.chat_template
    return fast


def convert_official(
    source: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None
) -> Path:
    """Convert an official checkpoint (a directory, or a Hub repo `org/name[@revision]`) into
    one that `parcae.from_pretrained` and `AutoModelForCausalLM.from_pretrained` both load;
    optionally save a tokenizer with it.

    Every argument is checked before anything is written: `source` must be an official
    checkpoint (its flat `config.json`, not ours) whose weights load strictly; `out` must not
    exist, or be an empty directory (a non-empty one is refused rather than overwritten or
    mixed with older files); the tokenizer must load and fit the model's vocabulary. The result
    is written into a temporary directory beside `out` and renamed to `out` at the end, so a
    failure midway leaves no `out` that looks complete.
    """
    source, out = Path(source), Path(out)
    if not source.exists() and is_hub_name(str(source)):
        source = resolve_model_dir(source)
    wrapper, fast = _checked_conversion(source, out, tokenizer)
    parent = out.parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        with staged_directory(out) as staging, _no_progress_bars():  # stderr: errors only
            wrapper.save_pretrained(str(staging))
            if fast is not None:
                fast.save_pretrained(str(staging))
    except BaseException as error:
        for directory in created:  # innermost first
            try:
                directory.rmdir()
            except OSError:
                break
        if isinstance(error, OSError):
            raise CheckpointError(
                f"{out}: writing the converted checkpoint failed ({error}); nothing was left there"
            ) from None
        raise
    return out


@contextlib.contextmanager
def _no_progress_bars():
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _checked_conversion(
    source: Path, out: Path, tokenizer: str | os.PathLike | None
) -> tuple[ParcaeForCausalLM, PreTrainedTokenizerFast | None]:
    """The converted model and tokenizer, in memory, once every argument of `convert_official`
    has been checked; writes nothing."""
    if os.path.lexists(out) and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory; give a new output directory")
    if out.is_dir() and any(out.iterdir()):
        raise CheckpointError(
            f"{out}: exists and is not empty; give a new (or empty) output directory"
        )
    ancestor = next(p for p in (out.parent, *out.parent.parents) if os.path.lexists(p))
    if not ancestor.is_dir():
        raise CheckpointError(f"{out}: cannot be created, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CheckpointError(f"{out}: cannot be created, {ancestor} is not writable")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise CheckpointError(f"{out} is inside the source {source}: write the output elsewhere")
    config = read_config(_existing_dir(source))
    if _is_ours(source / "config.json"):
        raise CheckpointError(
            f"{source} is already a parcae model directory, not an official checkpoint "
            f"(parcae.from_pretrained and transformers load it as it is)"
        )
    model = from_pretrained(source)
    fast = None
    if tokenizer is not None:
        loaded = Tokenizer.load(tokenizer)
        if loaded.vocab_size > config.vocab_size:
            raise DataError(
                f"{tokenizer}: the tokenizer has {loaded.vocab_size} tokens, more than the "
                f"model's vocabulary of {config.vocab_size}"
            )
        fast = to_transformers_tokenizer(loaded)
    return ParcaeForCausalLM.from_parcae(model), fast


def _existing_dir(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected an official checkpoint directory, got a file")
    return path


def _is_ours(config_file: Path) -> bool:
    """Whether a readable config.json is parcae's (it names its architecture) rather than the
    official flat one."""
    data = json.loads(config_file.read_text())
    return isinstance(data, dict) and "architecture" in data
