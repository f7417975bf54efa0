"""The short sample printed at the end of training."""

from __future__ import annotations

import torch
from torch import nn

from parcae.data.tokenizer import Tokenizer


@torch.no_grad()
def sample_text(model: nn.Module, tokenizer: Tokenizer, prompt: str, new_tokens: int,
                temperature: float, seed: int, device: torch.device) -> str:
    """`prompt` continued by `new_tokens` sampled tokens (BOS-prefixed prompt, as in training),
    with the model's KV-cache `generate`."""
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(prompt)]], device=device)
        room = model.config.context_length - ids.shape[1]
        output = model.generate(ids, max_new_tokens=min(new_tokens, room),
                                temperature=temperature, seed=seed)
    finally:
        model.train(was_training)
    return prompt + tokenizer.decode(output[0, ids.shape[1]:].tolist())
