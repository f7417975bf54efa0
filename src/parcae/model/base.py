"""What Parcae and the GPT baseline share: embeddings, value embeddings, head, loss, and the one
forward that assembles them.

    x      = wte[ids]
    x      = prelude blocks (x)            every block of a GPT
    x      = loop (x)                      Parcae only (`Parcae.recur`)
    x      = coda blocks (x)
    logits = lm_head(ln_f(x))

The same forward serves training (dense causal attention, sampled loop depths) and inference
over a `KVCache` (each block attends through its cache site; prefill and decoding alike).
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
from parcae.model.cache import CacheSharing, KVCache
from parcae.model.config import TransformerConfig
from parcae.model.init import init_matrix_, scaled_zero_std
from parcae.model.layers import Block, RMSNorm, rotary_tables
from parcae.model.loop import ExitRule, LoopProbe, LoopStats
from parcae.model.recurrence import DepthPlan
from parcae.model.serialization import save_pretrained


@dataclass
class CausalLMOutput:
    """logits: float32 (B, S, V_pad) ((B, 1, V_pad) with `last_only`); loss: mean cross-entropy
    over labels != -100, or None; loop: what the recurrence did (None for a fixed-depth model)."""

    logits: Tensor
    loss: Tensor | None = None
    loop: LoopStats | None = None


@dataclass
class TokenContext:
    """What every block of one forward shares about its tokens: rope cos, sin ((S, hd/2), or
    (B, S, hd/2) for per-row positions), value embeddings per distinct layer (B, S, Hkv*hd),
    and the cache, if any."""

    rope: tuple[Tensor, Tensor]
    value_embeds: dict[int, Tensor]
    cache: KVCache | None


class LanguageModel(nn.Module):
    """Token and value embeddings, rotary tables, final norm and LM head around a block stack."""

    config: TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        d, vocab = config.d_model, config.padded_vocab_size
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, d),
                "ln_f": RMSNorm(d, config.norm_eps),
            }
        )
        kv_width = config.n_kv_heads * config.head_dim
        self.value_embeds = nn.ModuleDict(
            {
                str(i): nn.Embedding(vocab, kv_width)
                for i in range(config.total_layers)
                if config.has_value_embedding(i)
            }
        )
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
        """Scaled-zero init of the shared parts (subclasses extend it), on the parameters'
        device: a model built on `meta` is materialised by `to_empty(device=...)` and this."""
        self.tie_weights()
        config = self.config
        std = scaled_zero_std(config.d_model)
        init_matrix_(self.transformer.wte.weight, std, config.init_orthogonal)
        for table in self.value_embeds.values():  # lookups: orthogonality buys nothing here
            nn.init.normal_(table.weight, std=std)
        if not config.tie_embeddings:
            init_matrix_(self.lm_head.weight, std, config.init_orthogonal)
        self.transformer.ln_f.weight.fill_(1.0)
        cos, sin = rotary_tables(
            config.head_dim, config.context_length, config.rope_theta, device=self.rope_cos.device
        )
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    # ---------------------------------------------------------------- layout

    def blocks(self) -> list[Block]:
        """Every distinct block, in layer order (`config.prelude_layers`, `core_layers`,
        `coda_layers` index it)."""
        raise NotImplementedError

    def recur(
        self,
        x: Tensor,
        context: TokenContext,
        positions: Tensor | None,
        num_steps: int | None,
        depth_plan: DepthPlan | None,
        exit_rule: ExitRule | None,
        probe: LoopProbe | None,
    ) -> tuple[Tensor, LoopStats]:
        """The loop between prelude and coda (looped models only)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        num_steps: int | None = None,
        depth_plan: DepthPlan | None = None,
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        exit_rule: ExitRule | None = None,
        last_only: bool = False,
        probe: LoopProbe | None = None,
    ) -> CausalLMOutput:
        """input_ids, labels: int64 (B, S).

        Depth (looped models; a GPT ignores these): `num_steps` runs exactly T loop steps, all
        with gradient; else `depth_plan` (per row or per token); else a sampled plan in training
        and `mean_recurrence` steps in eval. `exit_rule` lets a token stop early after a step
        (see `parcae.model.loop`).
        cache: a `KVCache` (`new_cache`): the S tokens are the next columns of its rows, the
        loop runs `cache.num_steps` steps, and nothing takes gradient. attention_mask: bool
        (B, S), False at left padding (with a cache only). last_only: logits of the last
        column only. probe: called after every loop step of a fixed depth (`num_steps` or a
        cache) with the state and a readout to logits (`parcae.model.loop.LoopProbe`); a GPT
        has no loop and never calls it.
        """
        if cache is None:
            if attention_mask is not None:
                raise ConfigError(
                    "attention_mask (left padding) needs a cache: pass cache=model.new_cache(...)"
                )
            return self._forward(
                input_ids, labels, num_steps, depth_plan, None, None, exit_rule, last_only, probe
            )
        with torch.no_grad():
            valid = (
                torch.ones_like(input_ids, dtype=torch.bool)
                if attention_mask is None
                else attention_mask.bool()
            )
            return self._forward(
                input_ids, labels, num_steps, depth_plan, cache, valid, exit_rule, last_only, probe
            )

    def _forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None,
        num_steps: int | None,
        depth_plan: DepthPlan | None,
        cache: KVCache | None,
        valid: Tensor | None,
        exit_rule: ExitRule | None,
        last_only: bool,
        probe: LoopProbe | None,
    ) -> CausalLMOutput:
        config = self.config
        positions = None
        if cache is None:
            rope = self.rope(input_ids.shape[1])
        else:
            positions = cache.begin(valid)
            rope = (self.rope_cos[positions], self.rope_sin[positions])
        context = TokenContext(rope, self.value_embeddings(input_ids), cache)
        x = self.run_blocks(self.transformer.wte(input_ids), config.prelude_layers, context)
        loop = None
        if config.is_looped:
            x, loop = self.recur(x, context, positions, num_steps, depth_plan, exit_rule, probe)
        x = self.run_blocks(x, config.coda_layers, context)
        if cache is not None:
            cache.advance()
        logits, loss = self.head(x[:, -1:] if last_only else x, labels)
        return CausalLMOutput(logits=logits, loss=loss, loop=loop)

    def run_blocks(self, x: Tensor, layers: range, context: TokenContext) -> Tensor:
        """Apply the distinct blocks `layers` (a prelude or coda) to x (B, S, d)."""
        cache = context.cache
        for layer, block in zip(layers, self.blocks()[layers.start : layers.stop]):
            x = block(
                x,
                context.rope,
                context.value_embeds.get(layer),
                None if cache is None else cache.site(layer),
            )
        return x

    def new_cache(
        self,
        batch: int,
        max_length: int,
        num_steps: int | None = None,
        sharing: str | CacheSharing | None = None,
        device=None,
        dtype=None,
    ) -> KVCache:
        """An empty `KVCache` for `batch` rows of up to `max_length` tokens, for loop depth
        `num_steps` (default mean_recurrence; a GPT has no loop)."""
        if num_steps is None:
            num_steps = getattr(self.config, "mean_recurrence", 0)
        return KVCache(self, batch, max_length, num_steps, sharing, device, dtype)

    def rope(self, seq_len: int) -> tuple[Tensor, Tensor]:
        if seq_len > self.config.context_length:
            raise ConfigError(
                f"sequence length {seq_len} exceeds the model's context_length "
                f"{self.config.context_length}"
            )
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

    def save_pretrained(self, path: str | Path) -> None:
        """Write `config.json` + `model.safetensors` (our format; see
        `parcae.model.serialization`)."""
        save_pretrained(self, path)
