"""ICL scoring: each task type on hand-made items whose answers are known (a bigram stub whose
logits are set), few-shot sampling, truncation, centered accuracy and CORE, and the real tiny
models batched, per depth and against a direct computation."""

import json
import math
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from parcae.errors import DataError
from parcae.eval.core import (
    TaskResult,
    centered_accuracy,
    core_score,
    evaluate_core,
    evaluate_task,
    prompt_task,
    score_items,
    score_sequences,
)
from parcae.eval.depths import check_depths
from parcae.eval.prompts import fewshot_indices, prompt_item
from parcae.eval.tasks import (
    LanguageModelingItem,
    MultipleChoiceItem,
    SchemaItem,
    Task,
    TaskSpec,
    read_items,
)
from tests.eval.conftest import make_model

CHARS = "\n " + string.ascii_lowercase


class CharTokenizer:
    """One token per character of CHARS, after BOS = 0 and PAD = 1."""

    bos_id, pad_id = 0, 1
    vocab_size = 2 + len(CHARS)

    def encode(self, text: str) -> list[int]:
        return [2 + CHARS.index(c) for c in text]


def char_id(c: str) -> int:
    return CharTokenizer().encode(c)[0]


class BigramModel(nn.Module):
    """A fixed-depth stub: the logits after token i are row i of a table that the test sets
    (every next token gets -5, except those listed, which get +5)."""

    def __init__(self, likes: dict[str, str], context_length: int = 64):
        super().__init__()
        vocab = CharTokenizer.vocab_size
        table = torch.full((vocab, vocab + 3), -5.0)  # 3 padded columns, never predicted
        table[:, vocab:] = 50.0  # huge padding logits must be ignored
        for before, after in likes.items():
            for c in after:
                table[char_id(before), char_id(c)] = 5.0
        self.table = nn.Parameter(table)
        self.config = SimpleNamespace(
            vocab_size=vocab, context_length=context_length, is_looped=False, default_depth=None
        )

    def new_cache(self, *args, **kwargs):  # a bigram needs no memory of earlier tokens
        return SimpleNamespace(select_rows=lambda index: None)

    def forward(self, ids, last_only=False, **kwargs):
        logits = self.table[ids]
        return SimpleNamespace(logits=logits[:, -1:] if last_only else logits, loop=None)


def task(kind: str, items, shots: int = 0, delimiter: str = "", baseline: float = 0.0):
    spec = TaskSpec("t", kind, Path("t.jsonl"), shots, delimiter, baseline)
    return Task(spec, list(items))


def accuracy(model, t, **kwargs) -> float:
    [result] = evaluate_task(model, CharTokenizer(), t, [None], progress=False, **kwargs)
    return result.accuracy


def test_multiple_choice_picks_the_lowest_mean_loss():
    model = BigramModel({"a": "b", "d": "c", "b": "b"})
    items = [
        MultipleChoiceItem("xa", ("b", "c"), 0),  # after a: b -> correct
        MultipleChoiceItem("xd", ("b", "c"), 0),  # after d: c -> wrong
        MultipleChoiceItem("xa", ("c", "bb"), 1),  # bb: both tokens liked -> correct
        MultipleChoiceItem("xd", ("cb", "b"), 0),  # mean loss of "cb" (liked, not) < "b" (not)
    ]
    assert accuracy(model, task("multiple_choice", items)) == 0.75


def test_schema_picks_the_context_under_which_the_continuation_is_likeliest():
    model = BigramModel({"a": "b", "d": "c"})
    items = [
        SchemaItem(("xa", "xd"), "b", 0),  # after a: b -> context 0 -> correct
        SchemaItem(("xa", "xd"), "c", 0),  # c is liked after d -> predicts 1 -> wrong
        SchemaItem(("xd", "xa"), "c", 0),  # -> correct
    ]
    assert accuracy(model, task("schema", items)) == pytest.approx(2 / 3)


def test_language_modeling_needs_every_token_greedy():
    model = BigramModel({"a": "b", "b": "b", " ": "a"})
    items = [
        LanguageModelingItem("xa", "bb"),  # a->b, b->b: correct
        LanguageModelingItem("xa", "bc"),  # b->c is not the argmax: wrong
        LanguageModelingItem("x ", "ab"),  # context is stripped: "x" + " " delimiter
    ]
    assert accuracy(model, task("language_modeling", items)) == pytest.approx(1 / 3)
    # with the delimiter " ", "x" + " " then "ab": x-> ' ' is not scored, ' '->a, a->b correct
    assert accuracy(model, task("language_modeling", items[2:], delimiter=" ")) == 1.0


def test_fewshot_examples_are_fixed_per_item_and_never_the_item():
    for index in range(10):
        shots = fewshot_indices(10, index, 4)
        assert len(set(shots)) == 4 and index not in shots
        assert shots == fewshot_indices(10, index, 4)
    assert fewshot_indices(10, 0, 4) != fewshot_indices(10, 1, 4)
    assert sorted(fewshot_indices(3, 1, 5)) == [0, 2]  # capped at the other items


def test_fewshot_prompt_renders_the_examples_with_their_gold_answers():
    items = [MultipleChoiceItem(q, ("b", "c"), g) for q, g in (("xa", 0), ("xd", 1), ("xe", 0))]
    t = task("multiple_choice", items, shots=2, delimiter=" ")
    prompted = prompt_item(t, 0, CharTokenizer(), 64)
    shots = fewshot_indices(3, 0, 2)
    examples = "".join(f"{items[i].query} {'bc'[items[i].gold]}\n\n" for i in shots)
    assert prompted.sequences[1].tokens == [0, *CharTokenizer().encode(examples + "xa c")]
    assert prompted.sequences[1].start == len(prompted.sequences[1].tokens) - 1
    assert prompted.gold == 0 and not prompted.truncated


def test_long_prompts_are_truncated_from_the_left_and_counted():
    items = [LanguageModelingItem("x" * n + "a", "bb") for n in (2, 30)]
    model = BigramModel({"a": "b", "b": "b"}, context_length=16)
    t = task("language_modeling", items)
    short, long = (prompt_item(t, i, CharTokenizer(), 16) for i in range(2))
    assert not short.truncated and long.truncated
    assert len(long.sequences[0].tokens) == 16
    assert long.sequences[0].tokens[long.sequences[0].start :] == CharTokenizer().encode("bb")
    [result] = evaluate_task(model, CharTokenizer(), t, [None], progress=False)
    assert (result.accuracy, result.truncated, result.n) == (1.0, 1, 2)


def test_centered_accuracy_and_core():
    assert centered_accuracy(0.25, 0.25) == 0.0
    assert centered_accuracy(1.0, 0.25) == 1.0
    assert centered_accuracy(0.625, 0.25) == 0.5
    results = [
        TaskResult("a", 1, 0.5, 0.5, 10, 0),
        TaskResult("b", 1, 0.1, -0.2, 10, 0),
        TaskResult("a", 2, 0.9, 0.8, 10, 0),
        TaskResult("b", 2, 0.4, 0.2, 10, 0),
    ]
    assert core_score(results) == pytest.approx({1: 0.15, 2: 0.5})


def test_evaluate_core_centers_each_task_on_its_baseline():
    model = BigramModel({"a": "b", "d": "c"})
    mc = task("multiple_choice", [MultipleChoiceItem("xa", ("b", "c"), 0)] * 4, baseline=0.5)
    lm = task("language_modeling", [LanguageModelingItem("xd", "b")] * 2)
    results, core = evaluate_core(model, CharTokenizer(), [mc, lm], [None], progress=False)
    assert [(r.accuracy, r.centered) for r in results] == [(1.0, 1.0), (0.0, 0.0)]
    assert core == {None: 0.5}


# ------------------------------------------------------------------ real tiny models

WORDS = ["the king", "a horse", "my lord", "good night", "sweet love", "the crown"]


def mc_task(n: int = 6) -> Task:
    items = [
        MultipleChoiceItem(f"{WORDS[i % 6]} said", (WORDS[(i + 1) % 6], WORDS[(i + 3) % 6]), i % 2)
        for i in range(n)
    ]
    return task("multiple_choice", items, shots=2, delimiter=" ", baseline=0.5)


def direct_prediction(model, tokenizer, t: Task, index: int, depth: int) -> int:
    """The choice with the lowest mean loss, one forward per choice."""
    losses = []
    for sequence in prompt_item(t, index, tokenizer, model.config.context_length).sequences:
        ids = torch.tensor([sequence.tokens])
        with torch.no_grad():
            logits = model(ids, num_steps=depth).logits[0, :, : model.config.vocab_size]
        logp = torch.log_softmax(logits.double(), dim=-1)
        targets = sequence.tokens[sequence.start :]
        nats = [-logp[sequence.start - 1 + k, y] for k, y in enumerate(targets)]
        losses.append(sum(nats) / len(nats))
    return min(range(len(losses)), key=losses.__getitem__)


def test_parcae_scores_every_depth_as_a_direct_computation(parcae_model, tokenizer):
    t = mc_task()
    results = evaluate_task(parcae_model, tokenizer, t, [1, 3], batch_size=4, progress=False)
    for result in results:
        predictions = [
            direct_prediction(parcae_model, tokenizer, t, i, result.depth) for i in range(6)
        ]
        expected = sum(p == item.gold for p, item in zip(predictions, t.items)) / 6
        assert result.accuracy == expected
        assert result.centered == pytest.approx(2 * expected - 1)
    assert [r.depth for r in results] == [1, 3]


def test_batched_and_one_at_a_time_agree(parcae_model, tokenizer):
    t = mc_task(8)
    lm = task("language_modeling", [LanguageModelingItem(w, " said") for w in WORDS], shots=1)
    for one_task in (t, lm):
        batched = evaluate_task(parcae_model, tokenizer, one_task, [2, 4], 16, progress=False)
        single = evaluate_task(parcae_model, tokenizer, one_task, [2, 4], 1, progress=False)
        assert [r.accuracy for r in batched] == [r.accuracy for r in single]


@pytest.mark.parametrize("preset", ["parcae-tiny", "gpt-tiny"])
def test_shared_prefix_scores_equal_full_sequence_scores(preset, tokenizer):
    """Options through a KV cache after their shared prefix (several items a group, left
    padded) give the losses and greedy flags of each whole sequence run alone."""
    model = make_model(preset, tokenizer)
    items = prompt_task(mc_task(7), tokenizer, model.config.context_length)
    depths = check_depths(model, [1, 3])
    shared = score_items(model, items, depths, 5, tokenizer.pad_id)
    sequences = [s for item in items for s in item.sequences]
    alone = score_sequences(model, sequences, depths, 1, tokenizer.pad_id)
    for depth in depths:
        torch.testing.assert_close(shared[depth][0], alone[depth][0], rtol=1e-5, atol=1e-5)
        assert torch.equal(shared[depth][1], alone[depth][1])


def test_a_fixed_depth_model_is_evaluated_once(gpt_model, tokenizer):
    results = evaluate_task(gpt_model, tokenizer, mc_task(), [1, 2, 4], progress=False)
    assert len(results) == 1 and results[0].depth is None
    predictions = [direct_prediction(gpt_model, tokenizer, mc_task(), i, None) for i in range(6)]
    assert (
        results[0].accuracy
        == sum(p == item.gold for p, item in zip(predictions, mc_task().items)) / 6
    )
    assert not math.isnan(results[0].centered)


def test_a_limit_spreads_the_items_over_the_file_and_every_line_is_checked(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"context": f"c{i}", "continuation": f" {i}"}) for i in range(10)]
    path.write_text("\n".join(lines) + "\n")
    picked = read_items(path, "language_modeling", limit=3)
    assert [item.context for item in picked] == ["c0", "c3", "c6"]
    assert len(read_items(path, "language_modeling")) == 10
    path.write_text("\n".join([*lines, '{"context": "late"}']) + "\n")
    with pytest.raises(DataError, match="t.jsonl:11: missing field 'continuation'"):
        read_items(path, "language_modeling", limit=3)


def test_shared_prefix_groups_mixing_full_length_and_long_options(parcae_model, tokenizer):
    """A truncated item (options at the full context) grouped with an item of long options:
    the right padding of the short rows must not run past the context."""
    long_options = (" ".join(WORDS * 3), " ".join(reversed(WORDS * 3)))
    items = [
        MultipleChoiceItem("my lord " * 80 + "said", ("the king", "a fool"), 0),
        MultipleChoiceItem("Who said", long_options, 1),
    ]
    t = task("multiple_choice", items, delimiter=" ")
    prompted = prompt_task(t, tokenizer, parcae_model.config.context_length)
    assert prompted[0].truncated and not prompted[1].truncated
    shared = score_items(parcae_model, prompted, [2], 16, tokenizer.pad_id)[2]
    sequences = [s for item in prompted for s in item.sequences]
    alone = score_sequences(parcae_model, sequences, [2], 1, tokenizer.pad_id)[2]
    torch.testing.assert_close(shared[0], alone[0], rtol=1e-5, atol=1e-5)
