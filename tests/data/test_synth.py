"""Synthetic reasoning data (`parcae.data.synth`, `parcae.data.synth_tasks`): every answer is
checked by an independent solver written here, difficulty is what the spec says, generation is
deterministic per seed, and the train and validation splits never share an item."""

from __future__ import annotations

import pytest
import torch

from parcae.data import synth
from parcae.data.synth_tasks import ALPHABET, TASKS
from parcae.errors import ConfigError, DataError

SPECS = ("synth:phop?hops=1-4", "synth:varchain?length=1-6", "synth:add?digits=1-5")
COUNT = 300


def solve_phop(prompt: str, hops: int) -> str:
    """Follow `hops` induction hops back from the last symbol, with str.rfind."""
    sequence = prompt.split(":")[1].rstrip("=")
    position = len(sequence) - 1
    for _ in range(hops):
        earlier = sequence.rfind(sequence[position], 0, position)
        assert earlier >= 0, f"hop undefined in {prompt}"
        position = earlier + 1
    return sequence[position]


def solve_varchain(prompt: str) -> tuple[str, int]:
    """(value of the queried variable, assignments followed to reach a digit)."""
    *statements, query = prompt.split(";")
    values = dict(statement.split("=") for statement in statements)
    name, steps = query.rstrip("?"), 0
    while not name.isdigit():
        name, steps = values[name], steps + 1
    return name, steps


def solve_add(prompt: str) -> tuple[str, int]:
    """(sum written least-significant digit first, digits of each operand)."""
    left, right = prompt.rstrip("=").split("+")
    assert len(left) == len(right)
    return str(int(left[::-1]) + int(right[::-1]))[::-1], len(left)


def items(spec: str, split: str = "train", seed: int = 0, count: int = COUNT):
    parsed = synth.parse_spec(spec)
    return [synth.draw(parsed, split, seed, index) for index in range(count)]


def test_phop_answers_match_the_solver_and_need_every_hop():
    for item in items(SPECS[0]):
        hops = int(item.prompt.split(":")[0])
        assert hops == item.difficulty and 1 <= hops <= 4
        assert solve_phop(item.prompt, hops) == item.answer
        # fewer hops never give the answer, so the difficulty is the hops needed
        assert all(solve_phop(item.prompt, k) != item.answer for k in range(hops))


def test_phop_never_repeats_a_symbol_next_to_itself():
    for item in items("synth:phop?hops=2&n=16&symbols=3", count=100):
        sequence = item.prompt.split(":")[1].rstrip("=")
        assert len(sequence) == 16 and set(sequence) <= set("abc")
        assert all(a != b for a, b in zip(sequence, sequence[1:]))


def test_varchain_answers_match_the_solver_and_chain_length_is_the_difficulty():
    for item in items(SPECS[1]):
        value, steps = solve_varchain(item.prompt)
        assert value == item.answer
        assert steps == item.difficulty
        assert item.prompt.count(";") == 2 * item.difficulty  # two chains, then the query


def test_add_answers_match_the_solver_and_digits_are_the_difficulty():
    for item in items(SPECS[2]):
        total, digits = solve_add(item.prompt)
        assert total == item.answer and digits == item.difficulty


def test_difficulties_cover_the_range_and_a_single_value_fixes_it():
    assert {item.difficulty for item in items(SPECS[1])} == set(range(1, 7))
    assert {item.difficulty for item in items("synth:varchain?length=5", count=50)} == {5}


@pytest.mark.parametrize("spec", SPECS)
def test_generation_is_deterministic_per_seed_and_differs_across_seeds(spec):
    assert items(spec, seed=3, count=50) == items(spec, seed=3, count=50)
    assert items(spec, seed=3, count=50) != items(spec, seed=4, count=50)


@pytest.mark.parametrize("spec", SPECS)
def test_train_and_val_never_share_an_item(spec):
    train = {item.prompt for seed in (0, 1) for item in items(spec, "train", seed, 1000)}
    val = {item.prompt for item in items(spec, "val", 0, 300)}
    assert train and val and not train & val
    assert {synth.split_of(p) for p in train} == {"train"}
    assert {synth.split_of(p) for p in val} == {"val"}


def test_items_use_only_the_alphabet_and_fit_the_spec_length():
    for spec in SPECS:
        parsed = synth.parse_spec(spec)
        for item in items(spec, count=100):
            assert set(item.prompt + item.answer) <= set(ALPHABET)
            assert len(item.prompt) + len(item.answer) <= parsed.max_chars


def test_encoded_rows_hold_the_item_and_target_only_the_answer_and_eos():
    tok = synth.tokenizer()
    item = synth.draw(synth.parse_spec(SPECS[2]), "train", 0, 0)
    batch = synth.encode(tok, [item], length=20)
    n_prompt, n_answer = len(item.prompt), len(item.answer)
    inputs, targets = batch.inputs[0].tolist(), batch.targets[0].tolist()
    assert inputs[0] == tok.bos_id
    assert tok.decode(inputs[1 : 1 + n_prompt + n_answer]) == item.prompt + item.answer
    assert set(inputs[1 + n_prompt + n_answer :]) == {tok.pad_id}
    assert tok.decode(targets[n_prompt : n_prompt + n_answer]) == item.answer
    assert targets[n_prompt + n_answer] == tok.eos_id
    assert set(targets[:n_prompt] + targets[n_prompt + n_answer + 1 :]) == {synth.IGNORE}


def test_tokenizer_is_character_level_over_the_alphabet():
    tok = synth.tokenizer()
    assert tok.vocab_size == 3 + len(ALPHABET)
    assert tok.encode(ALPHABET) == list(range(3, 3 + len(ALPHABET)))
    assert tok.decode(tok.encode("a=7;b=a;b?")) == "a=7;b=a;b?"


def test_loader_ranks_split_the_one_process_batch_and_resume_exactly():
    spec = SPECS[1]
    whole = synth.SynthLoader(spec, batch_size=4, seq_len=52, seed=5)
    ranks = [
        synth.SynthLoader(spec, batch_size=2, seq_len=52, seed=5, rank=r, world_size=2)
        for r in range(2)
    ]
    for _ in range(2):
        expected = whole.next_batch().inputs
        assert torch.equal(torch.cat([loader.next_batch().inputs for loader in ranks]), expected)
    resumed = synth.SynthLoader(spec, batch_size=4, seq_len=52, seed=5)
    resumed.load_state_dict(whole.state_dict())
    assert torch.equal(resumed.next_batch().inputs, whole.next_batch().inputs)
    other = synth.SynthLoader(spec, batch_size=4, seq_len=52, seed=6)
    with pytest.raises(DataError, match="seed"):
        other.load_state_dict(whole.state_dict())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synth:nope", "unknown synthetic task"),
        ("synth:phop?depth=2", "unknown option 'depth'"),
        ("synth:phop?hops=0", r"integer in \[1, 9\]"),
        ("synth:phop?hops=3-2", r"integer in \[3, 9\]"),
        ("synth:varchain?length=14", r"integer in \[1, 13\]"),
        ("synth:phop?n=x", "n='x'"),
        ("synth:phop?hops", "has no value"),
    ],
)
def test_bad_specs_are_refused_with_one_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        synth.parse_spec(spec)


def test_a_seq_len_too_short_for_the_task_is_refused_with_the_length_needed():
    needed = synth.parse_spec(SPECS[0]).max_tokens
    with pytest.raises(ConfigError, match=f"seq_len: {needed}"):
        synth.SynthLoader(SPECS[0], batch_size=2, seq_len=needed - 1)


def test_every_task_has_a_solver_here():
    assert set(TASKS) == {"phop", "varchain", "add"}
