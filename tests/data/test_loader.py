"""Token loader: packing, determinism, exact resume, rank partition, eval batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parcae.data.loader import TokenLoader, iter_eval_batches
from parcae.data.prepare import load_manifest
from parcae.data.shards import open_split
from parcae.errors import ConfigError, DataError

SEQ_LEN = 64


def stream(data_dir, split="train"):
    return np.concatenate(open_split(data_dir, split, load_manifest(data_dir))).astype(np.int64)


def rows_of(batch):
    """(B, S+1): the original rows, rebuilt from inputs and targets."""
    return torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1)


def test_batch_shapes_and_shifted_targets(data_dir):
    batch = TokenLoader(data_dir, "train", batch_size=4, seq_len=SEQ_LEN).next_batch()
    assert batch.inputs.shape == batch.targets.shape == (4, SEQ_LEN)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


def test_one_epoch_covers_every_row_once_without_padding(data_dir):
    loader = TokenLoader(data_dir, "train", batch_size=1, seq_len=SEQ_LEN, seed=3)
    tokens = stream(data_dir)
    n_rows = (len(tokens) - 1) // SEQ_LEN
    assert loader.rows_per_epoch == n_rows and loader.tokens_per_epoch == n_rows * SEQ_LEN
    assert loader.packing_efficiency == n_rows * SEQ_LEN / (len(tokens) - 1) > 0.99
    epoch = torch.cat([rows_of(loader.next_batch()) for _ in range(n_rows)]).tolist()
    expected = [tokens[k * SEQ_LEN : k * SEQ_LEN + SEQ_LEN + 1].tolist() for k in range(n_rows)]
    assert sorted(epoch) == sorted(expected) and epoch != expected


def test_same_seed_same_stream_other_seed_other_order(data_dir):
    a, b, c = (TokenLoader(data_dir, "train", 4, SEQ_LEN, seed=s) for s in (1, 1, 2))
    first = [a.next_batch().inputs for _ in range(3)]
    assert all(torch.equal(x, b.next_batch().inputs) for x in first)
    assert not all(torch.equal(x, c.next_batch().inputs) for x in first)


def test_epochs_are_reshuffled(data_dir):
    loader = TokenLoader(data_dir, "train", 1, SEQ_LEN, seed=0)
    n = loader.rows_per_epoch
    order = [loader._row(g) for g in range(2 * n)]
    assert sorted(order[:n]) == sorted(order[n:]) == list(range(n))
    assert order[:n] != order[n:]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 120), st.integers(1, 6), st.integers(0, 2**16))
def test_resumed_stream_equals_the_uninterrupted_one(data_dir, steps, batch_size, seed):
    reference = TokenLoader(data_dir, "train", batch_size, SEQ_LEN, seed=seed)
    for _ in range(steps):
        reference.next_batch()
    state = reference.state_dict()
    resumed = TokenLoader(data_dir, "train", batch_size, SEQ_LEN, seed=seed)
    resumed.load_state_dict(state)
    for _ in range(3):  # crosses epoch boundaries for large step counts
        assert torch.equal(resumed.next_batch().inputs, reference.next_batch().inputs)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_slices_of_the_single_process_batch(data_dir, world_size):
    batch_size = 3
    single = TokenLoader(data_dir, "train", batch_size * world_size, SEQ_LEN, seed=5)
    ranks = [
        TokenLoader(data_dir, "train", batch_size, SEQ_LEN, seed=5, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    steps = 2 * single.rows_per_epoch // (batch_size * world_size) + 1  # more than two epochs
    for _ in range(steps):
        together = torch.cat([loader.next_batch().inputs for loader in ranks])
        assert torch.equal(together, single.next_batch().inputs)
    assert all(loader.state_dict() == single.state_dict() for loader in ranks)


def test_ranks_partition_each_epoch(data_dir):
    world_size, batch_size = 2, 2
    ranks = [
        TokenLoader(data_dir, "train", batch_size, SEQ_LEN, rank=r, world_size=world_size)
        for r in range(2)
    ]
    n = ranks[0].rows_per_epoch
    seen = [
        [ranks[r]._row(g) for g in range(n) if (g // batch_size) % world_size == r]
        for r in range(2)
    ]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))


def test_eval_batches_cover_the_split_in_order(data_dir):
    tokens = stream(data_dir, "val")
    n_rows = (len(tokens) - 1) // SEQ_LEN
    batches = list(iter_eval_batches(data_dir, "val", batch_size=7, seq_len=SEQ_LEN))
    rows = torch.cat([rows_of(b) for b in batches]).numpy()
    assert len(batches) == -(-n_rows // 7)
    assert batches[-1].inputs.shape[0] == n_rows - 7 * (len(batches) - 1)
    expected = np.stack([tokens[k * SEQ_LEN : k * SEQ_LEN + SEQ_LEN + 1] for k in range(n_rows)])
    assert np.array_equal(rows, expected)
    assert len(list(iter_eval_batches(data_dir, "val", 7, SEQ_LEN, max_batches=2))) == 2


def test_state_from_another_configuration_is_refused(data_dir):
    state = TokenLoader(data_dir, "train", 2, SEQ_LEN, seed=1).state_dict()
    with pytest.raises(DataError, match="seed"):
        TokenLoader(data_dir, "train", 2, SEQ_LEN, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="seq_len"):
        TokenLoader(data_dir, "train", 2, SEQ_LEN * 2, seed=1).load_state_dict(state)


def test_split_shorter_than_a_row_is_refused(data_dir):
    with pytest.raises(DataError, match="fewer than seq_len"):
        TokenLoader(data_dir, "val", 1, seq_len=10**6)


def test_unknown_split_and_bad_rank_are_refused(data_dir):
    with pytest.raises(DataError, match="unknown split"):
        TokenLoader(data_dir, "test", 1, SEQ_LEN)
    with pytest.raises(ConfigError, match="rank"):
        TokenLoader(data_dir, "train", 1, SEQ_LEN, rank=2, world_size=2)


def test_batch_moves_to_a_device(data_dir):
    batch = TokenLoader(data_dir, "train", 2, SEQ_LEN).next_batch().to("meta")
    assert batch.inputs.device.type == batch.targets.device.type == "meta"
    assert batch.inputs.shape == batch.targets.shape == (2, SEQ_LEN)
