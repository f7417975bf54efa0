"""GPT: the fixed-depth baseline, `logits = lm_head(ln_f(Blocks(wte[ids])))`.

Its blocks are the whole "prelude" of the shared forward (`LanguageModel.forward`): no loop, no
coda.
"""

from __future__ import annotations

import torch
from torch import nn

from parcae.model.base import LanguageModel
from parcae.model.config import GPTConfig
from parcae.model.init import init_block_, scaled_zero_std
from parcae.model.layers import Block


class GPT(LanguageModel):
    config: GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.transformer["h"] = nn.ModuleList(
            Block(config, config.has_value_embedding(i)) for i in range(config.n_layers)
        )

    def blocks(self) -> list[Block]:
        return list(self.transformer.h)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        std = scaled_zero_std(self.config.d_model)
        for block in self.transformer.h:
            init_block_(block, std, self.config.init_orthogonal)

    def spectral_radius(self) -> None:
        """A fixed-depth model has no loop."""
        return None
