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

from parcae.errors import ConfigError
from parcae.model.base import LanguageModel, TokenContext
from parcae.model.cache import KVCache, LoopKV
from parcae.model.config import ParcaeConfig
from parcae.model.decode import FixedShapeCache
from parcae.model.init import init_block_, init_matrix_, scaled_zero_std
from parcae.model.injection import build_injection, spectral_radius
from parcae.model.layers import Block, RMSNorm
from parcae.model.loop import (
    Active,
    ExitRule,
    LoopProbe,
    LoopStats,
    RowSchedule,
    TokenSchedule,
    run_loop,
)
from parcae.model.recurrence import DepthPlan, sample_depth_plan


class Parcae(LanguageModel):
    config: ParcaeConfig

    def __init__(self, config: ParcaeConfig) -> None:
        super().__init__(config)
        d = config.d_model

        def blocks(layers: range) -> nn.ModuleList:
            return nn.ModuleList(Block(config, config.has_value_embedding(i)) for i in layers)

        self.transformer.update(
            {
                "prelude": blocks(config.prelude_layers),
                "adapter": build_injection(config.injection, d, d, config.discretization),
                "core_block": blocks(config.core_layers),
                "C": nn.Linear(d, d, bias=False),
                "coda": blocks(config.coda_layers),
            }
        )
        if config.prelude_norm:
            self.transformer["ln_prelude"] = RMSNorm(d, config.norm_eps)

    def blocks(self) -> list[Block]:
        t = self.transformer
        return [*t.prelude, *t.core_block, *t.coda]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        config, t = self.config, self.transformer
        std = scaled_zero_std(config.d_model)
        for block in self.blocks():
            init_block_(block, std, config.init_orthogonal)
        init_matrix_(t.C.weight, std, config.init_orthogonal)
        t.adapter.reset_parameters(std, config.init_orthogonal)
        if config.prelude_norm:
            t.ln_prelude.weight.fill_(1.0)

    # ---------------------------------------------------------------- loop diagnostics

    @torch.no_grad()
    def transition(self) -> Tensor | None:
        """Ā of the injection's linear part: (d_r,) for the diagonal injection, every entry in
        (0, 1); (d_r, d_r) for the linear (RDM) one; None for the additive one."""
        return self.transformer.adapter.transition()

    def spectral_radius(self) -> float | None:
        """ρ(Ā): max(Ā) for the diagonal injection (< 1 by construction), the largest eigenvalue
        modulus of W_h for the linear one (unbounded); None for the additive one."""
        transition = self.transition()
        return None if transition is None else spectral_radius(transition)

    def sample_depth_plan(
        self, batch_size: int, seq_len: int, generator: torch.Generator | None = None, step: int = 0
    ) -> DepthPlan:
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
            return nn.init.trunc_normal_(noise, std=std, a=-3 * std, b=3 * std, generator=generator)
        noise.normal_(generator=generator)
        if kind == "embed":
            return noise / math.sqrt(d)
        if kind == "unit":
            std, mean = torch.std_mean(noise, dim=-1, keepdim=True)
            return (noise - mean) / std
        return noise  # normal

    def recur(
        self,
        x: Tensor,
        context: TokenContext,
        positions: Tensor | None,
        num_steps: int | None,
        depth_plan: DepthPlan | None,
        exit_rule: ExitRule | None,
        probe: LoopProbe | None = None,
    ) -> tuple[Tensor, LoopStats]:
        """C h_T (B, S, d) from the prelude output x (B, S, d): e = ln_prelude(x), h_0, then
        the loop (see `parcae.model.loop` for the schedules and `LanguageModel.forward` for the
        arguments). Over a cache without an exit rule, every token runs the cache's T steps in
        lockstep (`LockstepSchedule`): with a `FixedShapeCache` that is the decode step's and the
        ONNX export's loop, unrolled into their graphs."""
        config, t = self.config, self.transformer
        batch, seq = x.shape[:2]
        e = t.ln_prelude(x) if config.prelude_norm else x
        prepared = t.adapter.prepare(e)
        cache = context.cache
        if probe is not None and num_steps is None and cache is None:
            raise ConfigError("a loop probe reads a fixed depth: pass num_steps")
        sites: KVCache | FixedShapeCache | LoopKV | None = cache  # None: dense causal attention
        if cache is not None:
            if num_steps is not None and num_steps != cache.num_steps:
                raise ConfigError(
                    f"num_steps={num_steps} but the cache was made for {cache.num_steps} loop steps"
                )
            if exit_rule is not None and isinstance(cache, FixedShapeCache):
                raise ConfigError("a fixed-shape cache runs every token T steps: no exit rule")
            h = cache.initial_state(positions, e)
            schedule = TokenSchedule.fixed((batch, seq), cache.num_steps, e.device, exit_rule)
        else:
            plan = self._depth_plan(batch, seq, num_steps, depth_plan)
            h = self.initial_state(batch, seq, plan, e.device, e.dtype)
            if plan.per_token or exit_rule is not None:
                plan = plan.per_token_plan(seq)
                schedule = TokenSchedule(
                    plan.total_steps.to(e.device), plan.no_grad_steps.to(e.device), exit_rule
                )
                sites = LoopKV(batch, seq)
            else:
                schedule = RowSchedule(plan, e.device)

        def step(h: Tensor, active: Active) -> Tensor:
            x = t.adapter.step(h, active.take(prepared))
            rope = active.take_rope(context.rope)
            for layer, block in zip(config.core_layers, t.core_block):
                site = None if sites is None else sites.site(layer, active)
                x = block(x, rope, active.take(context.value_embeds.get(layer)), site)
            return x

        def readout(h: Tensor) -> Tensor:
            return self.head(self.run_blocks(t.C(h), config.coda_layers, context), None)[0]

        h, stats = run_loop(step, h, schedule, readout, probe)
        if cache is not None and exit_rule is not None:
            cache.fill_skipped_steps(int(stats.steps.max()))
        return t.C(h), stats

    def _depth_plan(
        self, batch: int, seq: int, num_steps: int | None, depth_plan: DepthPlan | None
    ) -> DepthPlan:
        """`num_steps` for every row; else `depth_plan`; else sampled (training) or
        `mean_recurrence` (eval)."""
        if num_steps is not None:  # checked by `LanguageModel.forward`
            return DepthPlan.fixed(batch, num_steps)
        if depth_plan is not None:
            return depth_plan
        if self.training:
            return sample_depth_plan(self.config, batch, seq, step=self.config.curriculum_steps)
        return DepthPlan.fixed(batch, self.config.mean_recurrence)


__all__ = ["Parcae", "DepthPlan", "LoopStats"]
