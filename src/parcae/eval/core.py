"""Score ICL tasks at several test-time depths, and the CORE metric (ARCHITECTURE §5.2).

Every sequence of every item of a task (`parcae.eval.prompts`) is scored at every depth, in
batches, right-padded (the model is causal, so padding after a sequence changes none of its
logits):

- items of one sequence (language modeling): sorted by length, `batch_size` sequences a forward,
  every depth from one forward (`parcae.eval.depths`);
- items of several sequences (multiple choice, schema), whose sequences share a long prefix (the
  few-shot examples, the query): the shared prefix of a group of items runs once, left-padded,
  into a KV cache, each item's row is repeated once per option, and all options' remaining
  tokens run in one more forward; once per depth. Groups hold items up to `batch_size` options
  (at least one item).

For continuation tokens y_s (s = start..S-1) of a sequence, from the logits of the first
`vocab_size` columns at position s - 1:

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
from parcae.eval.depths import at_depths, check_depths
from parcae.eval.prompts import PromptedItem, common_prefix, prompt_item
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
    logits: Tensor, batch: list[TokenSequence], vocab_size: int
) -> tuple[Tensor, Tensor]:
    """(mean loss, greedy) of each sequence of the batch, float64 / bool (B,), on the CPU, from
    logits (B, S, V_pad) whose position s - 1 predicts token s."""
    device = logits.device
    rows, cols, targets = [], [], []
    for row, sequence in enumerate(batch):
        span = range(sequence.start, len(sequence.tokens))
        rows += [row] * len(span)
        cols += [s - 1 for s in span]
        targets += sequence.tokens[sequence.start :]
    rows_t = torch.tensor(rows, device=device)
    targets_t = torch.tensor(targets, device=device)
    logits = logits[rows_t, torch.tensor(cols, device=device), :vocab_size].float()
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
            lambda out, batch=batch: _continuation_scores(out.logits, batch, vocab_size),
        )
        for depth, (batch_loss, batch_greedy) in scores.items():
            loss[depth][index] = batch_loss
            greedy[depth][index] = batch_greedy
        if progress is not None:
            progress.update(len(batch))
    return {depth: (loss[depth], greedy[depth]) for depth in depths}


def _shared_prefix(item: PromptedItem) -> int:
    """Tokens every sequence of the item shares before its first scored token (0 only when
    truncation cut into the options)."""
    first = item.sequences[0].tokens
    return min(
        min(s.start for s in item.sequences),
        *(common_prefix(first, s.tokens) for s in item.sequences[1:]),
    )


def _groups(items: list[PromptedItem], batch_size: int) -> list[list[int]]:
    """Consecutive item indices, each group up to `batch_size` sequences (at least one item)."""
    groups: list[list[int]] = [[]]
    rows = 0
    for index, item in enumerate(items):
        count = len(item.sequences)
        if groups[-1] and rows + count > batch_size:
            groups.append([])
            rows = 0
        groups[-1].append(index)
        rows += count
    return groups


def _score_group(
    model: nn.Module, items: list[PromptedItem], depth: int | None, pad_id: int
) -> tuple[Tensor, Tensor]:
    """(mean loss, greedy) of every sequence of `items` (in order) at `depth`: the shared
    prefixes through a KV cache once, then every option's remaining tokens."""
    device = next(model.parameters()).device
    prefixes = [_shared_prefix(item) for item in items]
    width = max(prefixes)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    valid = torch.zeros(len(items), width, dtype=torch.bool)
    for row, (item, length) in enumerate(zip(items, prefixes)):
        ids[row, width - length :] = torch.tensor(item.sequences[0].tokens[:length])
        valid[row, width - length :] = True
    # each option as BOS-less "pad + rest": its logit column k predicts rest token k
    rests = [
        TokenSequence([pad_id, *s.tokens[length:]], s.start - length + 1)
        for item, length in zip(items, prefixes)
        for s in item.sequences
    ]
    rest_width = max(len(rest.tokens) for rest in rests) - 1
    owners = torch.tensor([row for row, item in enumerate(items) for _ in item.sequences])
    rest_ids = torch.full((len(rests), rest_width), pad_id, dtype=torch.long)
    rest_valid = torch.zeros(len(rests), rest_width, dtype=torch.bool)
    for row, rest in enumerate(rests):
        rest_ids[row, : len(rest.tokens) - 1] = torch.tensor(rest.tokens[1:])
        rest_valid[row, : len(rest.tokens) - 1] = True
    cache = model.new_cache(len(items), width + rest_width, num_steps=depth)
    last = model(
        ids.to(device), cache=cache, attention_mask=valid.to(device), last_only=True
    ).logits
    cache.select_rows(owners.to(device))
    # right padding marked invalid takes no position, so no row runs past the context
    logits = model(rest_ids.to(device), cache=cache, attention_mask=rest_valid.to(device)).logits
    logits = torch.cat([last[owners.to(device)], logits[:, :-1]], dim=1)
    return _continuation_scores(logits, rests, model.config.vocab_size)


@torch.no_grad()
def score_items(
    model: nn.Module,
    items: list[PromptedItem],
    depths: list[int | None],
    batch_size: int,
    pad_id: int,
    progress: tqdm | None = None,
) -> dict[int | None, tuple[Tensor, Tensor]]:
    """{depth: (mean continuation loss, greedy)} of every sequence of every item (flat, in
    order): shared prefixes once per group when items have several sequences, else
    `score_sequences`."""
    sequences = [s for item in items for s in item.sequences]
    if all(len(item.sequences) == 1 for item in items) or min(map(_shared_prefix, items)) < 1:
        return score_sequences(model, sequences, depths, batch_size, pad_id, progress)
    scores = {depth: ([], []) for depth in depths}
    for group in _groups(items, batch_size):
        members = [items[i] for i in group]
        for depth in depths:
            loss, greedy = _score_group(model, members, depth, pad_id)
            scores[depth][0].append(loss)
            scores[depth][1].append(greedy)
        if progress is not None:
            progress.update(sum(len(item.sequences) for item in members))
    return {depth: (torch.cat(loss), torch.cat(greedy)) for depth, (loss, greedy) in scores.items()}


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
    total = sum(len(item.sequences) for item in items)
    with tqdm(
        total=total, desc=task.spec.label, unit="seq", disable=not progress, leave=False
    ) as bar:
        scores = score_items(model, items, depths, batch_size, tokenizer.pad_id, bar)
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
