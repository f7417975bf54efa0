"""Score ICL tasks at several test-time depths, and the CORE metric (ARCHITECTURE §5.2).

Every sequence of every item of a task (`parcae.eval.prompts`) is scored at every depth: the
sequences are sorted by length and run `batch_size` at a time, right-padded (the model is
causal, so padding after a sequence changes none of its logits), all depths from one forward
(`parcae.eval.depths`). For continuation tokens y_s (s = start..S-1) of a sequence, from the
logits of the first `vocab_size` columns at position s - 1:

    mean loss = mean_s -log softmax(logits_{s-1})[y_s]
    greedy    = all_s argmax(logits_{s-1}) = y_s

An item is correct when: multiple choice / schema, its gold option has the lowest mean loss
(the first on ties); language modeling, its sequence is greedy. Then

    accuracy = mean over items          centered = (accuracy - b) / (1 - b)
    CORE     = mean over tasks of centered accuracy

with b the task's random baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from parcae.data.tokenizer import Tokenizer
from parcae.eval.depths import DepthOutput, at_depths, check_depths
from parcae.eval.prompts import PromptedItem, prompt_item
from parcae.eval.prompts import Sequence as TokenSequence
from parcae.eval.tasks import Task


@dataclass
class TaskResult:
    """One task at one depth (None: a fixed-depth model's own)."""

    task: str
    depth: int | None
    accuracy: float
    centered: float
    n: int
    truncated: int  # items with a sequence truncated from the left

    def to_dict(self) -> dict:
        return asdict(self)


def centered_accuracy(accuracy: float, baseline: float) -> float:
    """(accuracy - b) / (1 - b): 0 at chance, 1 when perfect."""
    return (accuracy - baseline) / (1 - baseline)


def core_score(results: Sequence[TaskResult]) -> dict[int | None, float]:
    """{depth: mean centered accuracy over the tasks evaluated at that depth}."""
    by_depth: dict[int | None, list[float]] = {}
    for result in results:
        by_depth.setdefault(result.depth, []).append(result.centered)
    return {depth: sum(values) / len(values) for depth, values in by_depth.items()}


def prompt_task(task: Task, tokenizer: Tokenizer, max_length: int) -> list[PromptedItem]:
    """The token sequences of every item of the task."""
    return [prompt_item(task, i, tokenizer, max_length) for i in range(len(task.items))]


def _continuation_scores(
    out: DepthOutput, batch: list[TokenSequence], vocab_size: int
) -> tuple[Tensor, Tensor]:
    """(mean loss, greedy) of each sequence of the batch, float64 / bool (B,), on the CPU."""
    device = out.logits.device
    rows, cols, targets = [], [], []
    for row, sequence in enumerate(batch):
        span = range(sequence.start, len(sequence.tokens))
        rows += [row] * len(span)
        cols += [s - 1 for s in span]
        targets += sequence.tokens[sequence.start :]
    rows_t = torch.tensor(rows, device=device)
    targets_t = torch.tensor(targets, device=device)
    logits = out.logits[rows_t, torch.tensor(cols, device=device), :vocab_size].float()
    nats = -torch.log_softmax(logits, dim=-1).gather(1, targets_t[:, None]).squeeze(1)
    hits = (logits.argmax(dim=-1) == targets_t).double()
    count = torch.zeros(len(batch), dtype=torch.float64, device=device)
    count.index_add_(0, rows_t, torch.ones_like(hits))
    loss = torch.zeros_like(count).index_add_(0, rows_t, nats.double()) / count
    greedy = torch.zeros_like(count).index_add_(0, rows_t, hits) == count
    return loss.cpu(), greedy.cpu()


@torch.no_grad()
def score_sequences(
    model: nn.Module,
    sequences: list[TokenSequence],
    depths: list[int | None],
    batch_size: int,
    pad_id: int,
    progress: tqdm | None = None,
) -> dict[int | None, tuple[Tensor, Tensor]]:
    """{depth: (mean continuation loss (N,), greedy (N,))} of every sequence, batched."""
    device = next(model.parameters()).device
    vocab_size = model.config.vocab_size
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].tokens))
    loss = {depth: torch.zeros(len(sequences), dtype=torch.float64) for depth in depths}
    greedy = {depth: torch.zeros(len(sequences), dtype=torch.bool) for depth in depths}
    for first in range(0, len(order), batch_size):
        index = order[first : first + batch_size]
        batch = [sequences[i] for i in index]
        width = len(batch[0].tokens)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence.tokens)] = torch.tensor(sequence.tokens)
        scores = at_depths(
            model,
            ids.to(device),
            depths,
            lambda out, batch=batch: _continuation_scores(out, batch, vocab_size),
        )
        for depth, (batch_loss, batch_greedy) in scores.items():
            loss[depth][index] = batch_loss
            greedy[depth][index] = batch_greedy
        if progress is not None:
            progress.update(len(batch))
    return {depth: (loss[depth], greedy[depth]) for depth in depths}


def _correct(items: list[PromptedItem], loss: Tensor, greedy: Tensor) -> list[bool]:
    """Per item, from the flat per-sequence scores (items' sequences in order)."""
    correct, offset = [], 0
    for item in items:
        count = len(item.sequences)
        if item.gold is None:
            correct.append(bool(greedy[offset]))
        else:
            correct.append(int(loss[offset : offset + count].argmin()) == item.gold)
        offset += count
    return correct


def evaluate_task(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    depths: Sequence[int | None],
    batch_size: int = 16,
    progress: bool = True,
) -> list[TaskResult]:
    """The task's accuracy at every depth (one result for a fixed-depth model)."""
    depths = check_depths(model, list(depths))
    items = prompt_task(task, tokenizer, model.config.context_length)
    sequences = [sequence for item in items for sequence in item.sequences]
    with tqdm(
        total=len(sequences), desc=task.spec.label, unit="seq", disable=not progress, leave=False
    ) as bar:
        scores = score_sequences(model, sequences, depths, batch_size, tokenizer.pad_id, bar)
    truncated = sum(item.truncated for item in items)
    results = []
    for depth in depths:
        correct = _correct(items, *scores[depth])
        accuracy = sum(correct) / len(correct)
        results.append(
            TaskResult(
                task=task.spec.label,
                depth=depth,
                accuracy=accuracy,
                centered=centered_accuracy(accuracy, task.spec.random_baseline),
                n=len(correct),
                truncated=truncated,
            )
        )
    return results


def evaluate_core(
    model: nn.Module,
    tokenizer: Tokenizer,
    tasks: Sequence[Task],
    depths: Sequence[int | None],
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[TaskResult], dict[int | None, float]]:
    """Every task at every depth, and CORE (mean centered accuracy) per depth."""
    was_training = model.training
    model.eval()
    try:
        results = [
            result
            for task in tasks
            for result in evaluate_task(model, tokenizer, task, depths, batch_size, progress)
        ]
    finally:
        model.train(was_training)
    return results, core_score(results)
