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
from torch import Tensor, nn

from parcae.errors import ConfigError, ParcaeError, PromptError
from parcae.model.cache import CacheSharing, KVCache
from parcae.model.config import MAX_NUM_STEPS, TransformerConfig
from parcae.model.decode import FixedShapeCache
from parcae.model.init import init_matrix_, scaled_zero_std
from parcae.model.layers import Block, RMSNorm, rotary_tables
from parcae.model.loop import ExitRule, LoopProbe, LoopStats
from parcae.model.loss import cross_entropy
from parcae.model.recurrence import DepthPlan
from parcae.model.serialization import save_pretrained

# The deepest loop a forward runs: far beyond any trained depth (μ_rec is 4 to 8), and a bound
# on the work and the cache (one slot per layer and step) that a mistyped depth can ask for.


def check_num_steps(
    num_steps, what: str = "num_steps", error: type[ParcaeError] = ConfigError
) -> None:
    """Refuse a loop depth that is not None or an integer in [1, MAX_NUM_STEPS] (one rule for
    every model: a GPT ignores a valid depth, and refuses an invalid one like Parcae)."""
    if num_steps is None:
        return
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise error(f"{what} must be a positive integer, got {num_steps!r}")
    if num_steps > MAX_NUM_STEPS:
        raise error(f"{what} is {num_steps}, above the limit of {MAX_NUM_STEPS} loop steps")


def check_token_ids(
    input_ids: Tensor, vocab_size: int, labels: Tensor | None = None, check_range: bool = True
) -> None:
    """Refuse (with a `PromptError`) input_ids that are not a non-empty int64 (or int32)
    (B, S) tensor of ids in [0, vocab_size), and labels that are not such ids of the same shape
    (or -100, ignored). The range check reads the values (one host sync for ids and labels
    together); `check_range=False` skips it."""
    named = (
        {"input_ids": input_ids} if labels is None else {"input_ids": input_ids, "labels": labels}
    )
    for name, ids in named.items():
        if not isinstance(ids, Tensor):
            raise PromptError(f"{name} must be a tensor of token ids, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise PromptError(f"{name} must be int64 token ids, got a {ids.dtype} tensor")
        if ids.dim() != 2:
            raise PromptError(f"{name} must have shape (B, S), got {tuple(ids.shape)}")
    if input_ids.numel() == 0:
        raise PromptError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give a token")
    if labels is not None and labels.shape != input_ids.shape:
        raise PromptError(
            f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}"
        )
    if not check_range or input_ids.device.type == "meta":
        return
    if labels is not None:
        named["labels"] = torch.where(labels == -100, 0, labels)
    bounds = torch.stack([f(ids).long() for ids in named.values() for f in (torch.min, torch.max)])
    bounds = bounds.tolist()
    for index, name in enumerate(named):
        low, high = bounds[2 * index : 2 * index + 2]
        bad = low if low < 0 else high if high >= vocab_size else None
        if bad is not None:
            ignored = " (or -100, ignored)" if name == "labels" else ""
            raise PromptError(
                f"{name} hold token id {bad}, outside the vocabulary [0, {vocab_size}){ignored}"
            )


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
    cache: KVCache | FixedShapeCache | None


def _embedding(rows: int, width: int) -> nn.Embedding:
    """An embedding table left uninitialised (`reset_parameters` or loaded weights fill it):
    nn.Embedding's own normal_ init would be wasted work, and on `meta` its first call costs
    seconds of imports."""
    return nn.Embedding(rows, width, _weight=torch.empty(rows, width))


class LanguageModel(nn.Module):
    """Token and value embeddings, rotary tables, final norm and LM head around a block stack."""

    config: TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        d, vocab = config.d_model, config.padded_vocab_size
        self.transformer = nn.ModuleDict(
            {
                "wte": _embedding(vocab, d),
                "ln_f": RMSNorm(d, config.norm_eps),
            }
        )
        kv_width = config.n_kv_heads * config.head_dim
        self.value_embeds = nn.ModuleDict(
            {
                str(i): _embedding(vocab, kv_width)
                for i in range(config.total_layers)
                if config.has_value_embedding(i)
            }
        )
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.tie_weights()
        self.register_buffer("rope_cos", None, persistent=False)
        self.register_buffer("rope_sin", None, persistent=False)
        self.reset_buffers()

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
        for table in self.value_embeds.values():  # N(0, 1), as the official code leaves them
            nn.init.normal_(table.weight)
        if not config.tie_embeddings:
            init_matrix_(self.lm_head.weight, std, config.init_orthogonal)
        self.transformer.ln_f.weight.fill_(1.0)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Recompute the derived, unsaved buffers (the rotary tables) on the token table's
        device: after `reset_parameters`, or after weights were assigned to a `meta` model."""
        config, device = self.config, self.transformer.wte.weight.device
        if device.type == "meta":  # shapes only (computing them on meta costs seconds of imports)
            shape = (config.context_length, config.head_dim // 2)
            self.rope_cos, self.rope_sin = (
                torch.empty(shape, device=device),
                torch.empty(shape, device=device),
            )
            return
        cos, sin = rotary_tables(config.head_dim, config.context_length, config.rope_theta, device)
        self.rope_cos, self.rope_sin = cos, sin

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
        cache: KVCache | FixedShapeCache | None = None,
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
        loop runs `cache.num_steps` steps, and nothing takes gradient; or its fixed-shape mode,
        a `FixedShapeCache` (the decode step and the ONNX export, see `parcae.model.decode`).
        attention_mask: bool (B, S), False at left padding (with a cache only). last_only:
        logits of the last column only. probe: called after every loop step of a fixed depth
        (`num_steps` or a cache) with the state and a readout to logits
        (`parcae.model.loop.LoopProbe`); a GPT has no loop and never calls it.

        Checked first (a `PromptError` or `ConfigError`, not an error from inside the
        embedding): input_ids and labels are non-empty integer (B, S) tensors of ids in
        [0, vocab_size) (labels may be -100), and num_steps is None or an integer in
        [1, MAX_NUM_STEPS] (for every model; a GPT then ignores it). The id range is read on
        every forward except a one-token step over a cache on an accelerator, where it would
        cost a host sync per generated token (`generate` checks its prompt and samples only ids
        in the vocabulary), and a step over a `FixedShapeCache` (a compiled or exported graph,
        which a host read would break; its callers feed ids they checked or sampled).
        """
        check_num_steps(num_steps)
        decoding = (
            cache is not None
            and isinstance(input_ids, Tensor)
            and input_ids.dim() == 2
            and input_ids.shape[1] == 1
        )
        graph = isinstance(cache, FixedShapeCache)
        check_token_ids(
            input_ids,
            self.config.vocab_size,
            labels,
            check_range=not (graph or decoding and input_ids.device.type != "cpu"),
        )
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
        cache: KVCache | FixedShapeCache | None,
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
        `num_steps` (default `config.default_depth`; checked like the forward's). A GPT has no loop:
        its cache ignores num_steps (and holds 0)."""
        if self.config.is_looped:
            check_num_steps(num_steps)
        if num_steps is None:
            num_steps = self.config.default_depth or 0  # a GPT's cache holds no loop step
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
            loss = cross_entropy(logits.flatten(0, 1), labels.flatten())
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
