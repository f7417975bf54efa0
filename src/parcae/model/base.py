"""What Parcae and the GPT baseline share: embeddings, value embeddings, head, loss, save.

Module names follow the official checkpoint layout (`transformer.wte`, `value_embeds.{i}`,
`transformer.ln_f`, `lm_head`) so that official state dicts load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae.errors import ConfigError
from parcae.model.config import TransformerConfig
from parcae.model.init import init_matrix_, scaled_zero_std
from parcae.model.layers import RMSNorm, rotary_tables
from parcae.model.recurrence import LoopStats


@dataclass
class CausalLMOutput:
    """logits: float32 (B, S, V_pad); loss: mean cross-entropy over labels != -100, or None;
    loop: what the recurrence did (None for a fixed-depth model)."""

    logits: Tensor
    loss: Tensor | None = None
    loop: LoopStats | None = None


class LanguageModel(nn.Module):
    """Token and value embeddings, rotary tables, final norm and LM head around a block stack."""

    config: TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        d, vocab = config.d_model, config.padded_vocab_size
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab, d),
            "ln_f": RMSNorm(d, config.norm_eps),
        })
        kv_width = config.n_kv_heads * config.head_dim
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(vocab, kv_width)
            for i in range(config.total_layers) if config.has_value_embedding(i)
        })
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.tie_weights()
        cos, sin = rotary_tables(config.head_dim, config.context_length, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def tie_weights(self) -> None:
        """Share the token table with the head when the config ties them (again after
        `to_empty`, which replaces each module's parameters separately)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Scaled-zero init of the shared parts; subclasses extend it."""
        config = self.config
        std = scaled_zero_std(config.d_model)
        init_matrix_(self.transformer.wte.weight, std, config.init_orthogonal)
        for table in self.value_embeds.values():  # lookups: orthogonality buys nothing here
            nn.init.normal_(table.weight, std=std)
        if not config.tie_embeddings:
            init_matrix_(self.lm_head.weight, std, config.init_orthogonal)
        self.transformer.ln_f.weight.fill_(1.0)
        cos, sin = rotary_tables(config.head_dim, config.context_length, config.rope_theta,
                                 device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def rope(self, seq_len: int) -> tuple[Tensor, Tensor]:
        if seq_len > self.config.context_length:
            raise ConfigError(f"sequence length {seq_len} exceeds the model's context_length "
                              f"{self.config.context_length}")
        return self.rope_cos[:seq_len], self.rope_sin[:seq_len]

    def value_embeddings(self, input_ids: Tensor) -> dict[int, Tensor]:
        """Per distinct layer i that owns a table: ve_i[input_ids], (B, S, Hkv*hd)."""
        return {int(i): table(input_ids) for i, table in self.value_embeds.items()}

    def head(self, y: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """logits = softcap(lm_head(ln_f(y))) in float32; loss = mean CE (ignore_index -100)."""
        logits = self.lm_head(self.transformer.ln_f(y)).float()
        cap = self.config.logit_softcap
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return logits, loss

    def num_params(self, include_embeddings: bool = True) -> int:
        """Distinct parameters (a tied head counts once); optionally without the lookup tables."""
        total = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            total -= self.transformer.wte.weight.numel()
            total -= sum(t.weight.numel() for t in self.value_embeds.values())
            if self.config.tie_embeddings:  # the tied table is also the head: a real matmul
                total += self.lm_head.weight.numel()
        return total

    def generate(self, input_ids, max_new_tokens: int, num_steps: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 eos_token_id: int | None = None, seed: int | None = None, streamer=None,
                 **options) -> Tensor:
        """Continue prompts with the KV cache; returns (B, P + N) prompt then new tokens.
        See `parcae.infer.generate.generate` (temperature 0 is greedy; `options`: attention_mask,
        pad_token_id, adaptive, cache_sharing, use_cache, stats)."""
        from parcae.infer.generate import generate

        return generate(self, input_ids, max_new_tokens, num_steps, temperature, top_k, top_p,
                        eos_token_id, seed, streamer, **options)

    def save_pretrained(self, path: str | Path) -> None:
        """Write `config.json` + `model.safetensors` (our format; see `parcae.pretrained`)."""
        from parcae.pretrained import save_pretrained

        save_pretrained(self, path)
