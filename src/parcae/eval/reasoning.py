"""Accuracy on a synthetic reasoning task (`parcae.data.synth`) by difficulty and test-time depth.

An item is correct when the greedy answer is exactly the answer followed by EOS. With the row
`<|bos|> prompt answer <|eos|>` (targets on the answer and EOS only), greedy decoding reproduces
the answer iff the argmax at every target position equals its target, since each position sees
the correct prefix exactly when all earlier ones were right; so one forward per batch scores
every item at every depth (`parcae.eval.depths.at_depths`):

    accuracy(d, T) = mean over the first n validation items of difficulty d of
                     all_{targets t} [argmax logits_T(t) = t]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from parcae.data.synth import IGNORE, encode, parse_spec, tokenizer, val_items
from parcae.eval.core import TaskResult
from parcae.eval.depths import DepthOutput, at_depths, check_depths


def _correct(output: DepthOutput, targets: Tensor) -> Tensor:
    """(B,) bool: every target of the row is the argmax."""
    hits = (output.logits.argmax(dim=-1) == targets) | (targets == IGNORE)
    return hits.all(dim=1).cpu()


@torch.no_grad()
def reasoning_accuracy(
    model: nn.Module,
    spec: str,
    depths: list[int | None],
    items: int = 256,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> list[TaskResult]:
    """One TaskResult per (difficulty, depth), labelled `<spec> <key>=<d>`, over the first
    `items` validation items of each difficulty of `spec`. `depths`: positive integers for a
    looped model (None: μ_rec), ignored for a fixed-depth one (its own depth, None)."""
    parsed, tok = parse_spec(spec), tokenizer()
    depths = [model.config.default_depth if depth is None else depth for depth in depths]
    run_depths = check_depths(model, depths)
    was_training = model.training
    model.eval()
    results = []
    try:
        for difficulty in parsed.difficulties:
            chosen = val_items(parsed, items, difficulty)
            right = {depth: 0 for depth in run_depths}
            for start in range(0, len(chosen), batch_size):
                batch = encode(tok, chosen[start : start + batch_size])
                targets = batch.targets.to(device)
                by_depth = at_depths(
                    model,
                    batch.inputs.to(device),
                    run_depths,
                    lambda output, targets=targets: _correct(output, targets),
                )
                for depth, correct in by_depth.items():
                    right[depth] += int(correct.sum())
            label = f"{spec} {parsed.task.difficulty_key}={difficulty}"
            for depth in run_depths:
                accuracy = right[depth] / len(chosen)
                results.append(TaskResult(label, depth, accuracy, accuracy, len(chosen), 0))
    finally:
        model.train(was_training)
    return results
