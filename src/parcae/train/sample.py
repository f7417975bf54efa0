"""The short sample printed at the end of training."""

from __future__ import annotations

import torch
from torch import nn

from parcae.data.tokenizer import Tokenizer
from parcae.infer.generate import generate
from parcae.train.config import TrainConfig


@torch.no_grad()
def sample_text(
    model: nn.Module, tokenizer: Tokenizer, config: TrainConfig, device: torch.device
) -> str:
    """`config.sample_prompt` continued by `sample_tokens` tokens sampled at
    `sample_temperature` with `seed` (BOS-prefixed prompt, as in training), with the KV-cache
    `generate`."""
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([tokenizer.encode_prompt(config.sample_prompt)], device=device)
        room = model.config.context_length - ids.shape[1]
        output = generate(
            model,
            ids,
            max_new_tokens=min(config.sample_tokens, room),
            temperature=config.sample_temperature,
            seed=config.seed,
        )
    finally:
        model.train(was_training)
    return config.sample_prompt + tokenizer.decode(output[0, ids.shape[1] :].tolist())
