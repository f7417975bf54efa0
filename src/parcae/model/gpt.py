"""GPT: the fixed-depth baseline, `logits = lm_head(ln_f(Blocks(wte[ids])))`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from parcae.model.base import CausalLMOutput, LanguageModel
from parcae.model.config import GPTConfig
from parcae.model.init import init_block_, scaled_zero_std
from parcae.model.layers import Block


class GPT(LanguageModel):
    config: GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.transformer["h"] = nn.ModuleList(
            Block(config, config.has_value_embedding(i)) for i in range(config.n_layers))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        std = scaled_zero_std(self.config.d_model)
        for block in self.transformer.h:
            init_block_(block, std, self.config.init_orthogonal)

    def spectral_radius(self) -> None:
        """A fixed-depth model has no loop."""
        return None

    def forward(self, input_ids: Tensor, labels: Tensor | None = None,
                num_steps: int | None = None, depth_plan=None) -> CausalLMOutput:
        """input_ids, labels: int64 (B, S). `num_steps` and `depth_plan` are accepted for a
        uniform interface with Parcae and ignored: the depth is fixed."""
        rope = self.rope(input_ids.shape[1])
        value_embeds = self.value_embeddings(input_ids)
        x = self.transformer.wte(input_ids)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, value_embeds.get(i))
        logits, loss = self.head(x, labels)
        return CausalLMOutput(logits=logits, loss=loss)
