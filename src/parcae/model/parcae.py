"""Parcae: a looped transformer whose loop is a stable linear system plus a learned residual.

    e      = ln_prelude(Prelude(wte[ids]))          (B, S, d)
    h_0    = state_init(B, S, d)
    h_t+1  = Core(inject(h_t, e))                   Lc shared blocks, T times
    logits = lm_head(ln_f(Coda(C h_T)))

With the diagonal injection, inject(h, e) = Ā h + B̄ e and every entry of Ā lies in (0, 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from parcae.model.base import CausalLMOutput, LanguageModel
from parcae.model.config import ParcaeConfig
from parcae.model.init import init_block_, init_matrix_, scaled_zero_std
from parcae.model.injection import DiagonalInjection, build_injection
from parcae.model.layers import Block, RMSNorm
from parcae.model.recurrence import DepthPlan, LoopStats, iterate, sample_depth_plan
from parcae.model.token_loop import iterate_tokens


class Parcae(LanguageModel):
    config: ParcaeConfig

    def __init__(self, config: ParcaeConfig) -> None:
        super().__init__(config)
        d = config.d_model
        first_core, first_coda = config.n_prelude, config.n_prelude + config.n_core

        def blocks(start: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(Block(config, config.has_value_embedding(i))
                                 for i in range(start, start + count))

        self.transformer.update({
            "prelude": blocks(0, config.n_prelude),
            "adapter": build_injection(config.injection, d, d, config.discretization),
            "core_block": blocks(first_core, config.n_core),
            "C": nn.Linear(d, d, bias=False),
            "coda": blocks(first_coda, config.n_coda),
        })
        if config.prelude_norm:
            self.transformer["ln_prelude"] = RMSNorm(d, config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        config, t = self.config, self.transformer
        std = scaled_zero_std(config.d_model)
        for block in (*t.prelude, *t.core_block, *t.coda):
            init_block_(block, std, config.init_orthogonal)
        init_matrix_(t.C.weight, std, config.init_orthogonal)
        if config.injection == "diagonal":
            t.adapter.reset_parameters()
        elif config.injection == "linear":
            init_matrix_(t.adapter.adapter.weight, std, config.init_orthogonal)
        if config.prelude_norm:
            t.ln_prelude.weight.fill_(1.0)

    # ---------------------------------------------------------------- loop diagnostics

    @torch.no_grad()
    def transition(self) -> Tensor | None:
        """Ā (d_r,) of the diagonal injection, every entry in (0, 1); None for the others."""
        adapter = self.transformer.adapter
        return adapter.transition() if isinstance(adapter, DiagonalInjection) else None

    def spectral_radius(self) -> float | None:
        """ρ(Ā) = max(Ā) for the diagonal injection (< 1 by construction); None otherwise."""
        transition = self.transition()
        return None if transition is None else float(transition.max())

    def sample_depth_plan(self, batch_size: int, seq_len: int,
                          generator: torch.Generator | None = None, step: int = 0) -> DepthPlan:
        """Training depths for a micro-batch (see `parcae.model.recurrence`)."""
        return sample_depth_plan(self.config, batch_size, seq_len, generator, step)

    # ---------------------------------------------------------------- forward

    def initial_state(self, batch: int, seq: int, plan: DepthPlan, device, dtype) -> Tensor:
        """h_0 (B, S, d). Noise is drawn per row from `plan.noise_seeds` in training; in eval it
        is one table per position from `state_init_seed`, so outputs are deterministic and the
        same whether a token is computed in a batch, alone, or incrementally."""
        kind, d = self.config.state_init, self.config.d_model
        if kind == "zero":
            return torch.zeros(batch, seq, d, device=device, dtype=dtype)
        if self.training:
            noise = torch.stack([self._noise(seq, int(seed)) for seed in plan.noise_seeds])
        else:
            noise = self._noise(self.config.context_length, self.config.state_init_seed)[:seq]
            noise = noise.expand(batch, seq, d)
        return noise.to(device=device, dtype=dtype)

    def eval_state_table(self, device=None, dtype=None) -> Tensor | None:
        """The eval-mode h_0 of every position, (context_length, d), or None for `zero` init:
        row p is the initial state of a token at position p (`initial_state` in eval mode
        takes rows 0..S-1; inference indexes it with per-row positions)."""
        if self.config.state_init == "zero":
            return None
        table = self._noise(self.config.context_length, self.config.state_init_seed)
        return table.to(device=device, dtype=dtype)

    def _noise(self, seq: int, seed: int) -> Tensor:
        d = self.config.d_model
        generator = torch.Generator().manual_seed(seed)
        noise = torch.empty(seq, d)
        kind = self.config.state_init
        if kind == "like-init":
            std = scaled_zero_std(d)
            return nn.init.trunc_normal_(noise, std=std, a=-3 * std, b=3 * std,
                                         generator=generator)
        noise.normal_(generator=generator)
        if kind == "embed":
            return noise / math.sqrt(d)
        if kind == "unit":
            std, mean = torch.std_mean(noise, dim=-1, keepdim=True)
            return (noise - mean) / std
        return noise  # normal

    def forward(self, input_ids: Tensor, labels: Tensor | None = None,
                num_steps: int | None = None, depth_plan: DepthPlan | None = None
                ) -> CausalLMOutput:
        """input_ids, labels: int64 (B, S). Depth: `num_steps` runs exactly that many loop steps
        (all with gradient); else `depth_plan`; else a sampled plan in training and
        `mean_recurrence` steps in eval."""
        batch, seq = input_ids.shape
        config, t = self.config, self.transformer
        if num_steps is not None:
            if num_steps < 0:
                raise ValueError(f"num_steps must be non-negative, got {num_steps}")
            plan = DepthPlan.fixed(batch, num_steps)
        elif depth_plan is not None:
            plan = depth_plan
        elif self.training:
            plan = sample_depth_plan(config, batch, seq, step=config.curriculum_steps)
        else:
            plan = DepthPlan.fixed(batch, config.mean_recurrence)

        rope = self.rope(seq)
        value_embeds = self.value_embeddings(input_ids)
        x = t.wte(input_ids)
        for i, block in enumerate(t.prelude):
            x = block(x, rope, value_embeds.get(i))
        e = t.ln_prelude(x) if config.prelude_norm else x

        injected = t.adapter.prepare(e)
        first_core = config.n_prelude
        core_embeds = [value_embeds.get(first_core + j) for j in range(config.n_core)]

        def loop_step(h: Tensor, rows: Tensor | None) -> Tensor:
            def take(tensor: Tensor | None) -> Tensor | None:
                return tensor if rows is None or tensor is None else tensor.index_select(0, rows)

            x = t.adapter.step(h, take(injected))
            for block, value_embed in zip(t.core_block, core_embeds):
                x = block(x, rope, take(value_embed))
            return x

        h = self.initial_state(batch, seq, plan, e.device, e.dtype)
        if plan.no_grad_steps.dim() == 2:
            h, loop_stats = iterate_tokens(t.core_block, t.adapter, injected, h, plan, rope,
                                           core_embeds)
        else:
            h, loop_stats = iterate(loop_step, h, plan)

        y = t.C(h)
        first_coda = config.n_prelude + config.n_core
        for j, block in enumerate(t.coda):
            y = block(y, rope, value_embeds.get(first_coda + j))
        logits, loss = self.head(y, labels)
        return CausalLMOutput(logits=logits, loss=loss, loop=loop_stats)


__all__ = ["Parcae", "DepthPlan", "LoopStats"]
