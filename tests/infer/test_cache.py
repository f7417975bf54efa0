"""KV cache: incremental logits equal a full forward; sharing strategies map steps to slots."""

import pytest
import torch

from parcae.errors import PromptError
from parcae.model import CacheSharing


def incremental_logits(model, ids, prefill, num_steps, sharing="full"):
    batch, seq = ids.shape
    cache = model.new_cache(batch, seq, num_steps, sharing)
    outputs = [model(ids[:, :prefill], cache=cache).logits]
    for i in range(prefill, seq):
        outputs.append(model(ids[:, i : i + 1], cache=cache).logits)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
def test_incremental_logits_match_the_official_fixture(official, num_steps):
    model, expected = official
    ids = expected["input_ids"]
    logits = incremental_logits(model, ids, 10, num_steps)
    assert (logits - model(ids, num_steps=num_steps).logits).abs().max() < 1e-5
    assert (logits - expected[f"logits_T{num_steps}"]).abs().max() < 1e-5


def test_incremental_logits_match_full_forward_with_state_noise(parcae_model):
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    assert parcae_model.config.state_init == "like-init"
    logits = incremental_logits(parcae_model, ids, 7, 3)
    assert (logits - parcae_model(ids, num_steps=3).logits).abs().max() < 1e-5


def test_incremental_logits_match_full_forward_for_gpt(gpt_model):
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(2))
    logits = incremental_logits(gpt_model, ids, 1, 0)
    assert (logits - gpt_model(ids).logits).abs().max() < 1e-5


def test_shared_slots_reduce_memory_and_approximate(parcae_model):
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(3))
    full = parcae_model.new_cache(1, 16, 4, "full")
    shared = parcae_model.new_cache(1, 16, 4, "shared")
    assert shared.keys.shape[0] == full.keys.shape[0] - 2 * 3  # 2 core layers, 4 -> 1 slot
    logits = incremental_logits(parcae_model, ids, 4, 4, "shared")
    reference = parcae_model(ids, num_steps=4).logits
    assert torch.isfinite(logits).all()
    assert (logits[:, :4] - reference[:, :4]).abs().max() < 1e-5  # the prefill is exact


def test_cheaper_sharing_approximates_worse(parcae_model):
    """Decoding error against the uncached forward: `full` is exact, and within each family
    fewer slots cost more (seen: last:4 7e-4 < last:2 1.2e-3; ring:3 1.1e-3 < ring:2 1.3e-3 <
    shared 1.4e-3, mean absolute logit error)."""
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = parcae_model(ids, num_steps=6).logits[:, 4:]

    def error(sharing: str) -> float:
        return float(
            (incremental_logits(parcae_model, ids, 4, 6, sharing)[:, 4:] - reference).abs().mean()
        )

    errors = {
        sharing: error(sharing)
        for sharing in ("full", "last:4", "last:2", "ring:3", "ring:2", "shared")
    }
    assert errors["full"] < 1e-5 < errors["last:4"]
    assert errors["last:4"] < errors["last:2"] < errors["shared"]
    assert errors["ring:3"] < errors["ring:2"] < errors["shared"]


@pytest.mark.parametrize(
    "sharing, core_slots",
    [
        ("full", [[2, 3, 4, 5], [6, 7, 8, 9]]),
        ("ring:2", [[2, 3, 2, 3], [4, 5, 4, 5]]),
        ("last:2", [[2, 2, 2, 3], [4, 4, 4, 5]]),
        ("shared", [[2, 2, 2, 2], [3, 3, 3, 3]]),
    ],
)
def test_cache_slot_map_of_every_layer_and_step(parcae_model, sharing, core_slots):
    """parcae-tiny: prelude layers 0, 1; core layers 2, 3; coda layers 4, 5; T = 4."""
    cache = parcae_model.new_cache(1, 8, 4, sharing)
    assert [cache.slot(layer) for layer in (0, 1)] == [0, 1]
    assert [[cache.slot(layer, step) for step in range(4)] for layer in (2, 3)] == core_slots
    first_coda = core_slots[-1][-1] + 1
    assert [cache.slot(layer) for layer in (4, 5)] == [first_coda, first_coda + 1]
    assert cache.keys.shape[0] == first_coda + 2


def test_a_cache_is_reused_across_requests(parcae_model):
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(5))
    cache = parcae_model.new_cache(2, 12, 3)
    parcae_model(ids[:, :7], cache=cache)
    cache.reset()
    again = torch.cat(
        [
            parcae_model(ids[:, :5], cache=cache).logits,
            parcae_model(ids[:, 5:], cache=cache).logits,
        ],
        dim=1,
    )
    assert (again - parcae_model(ids, num_steps=3).logits).abs().max() < 1e-5


def test_a_released_row_starts_a_new_sequence_beside_a_running_one(parcae_model):
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(6))
    new_prompt = torch.randint(0, 300, (1, 4), generator=torch.Generator().manual_seed(7))
    cache = parcae_model.new_cache(2, 16, 3)
    parcae_model(ids[:, :6], cache=cache)
    cache.release([1])
    # row 0 continues with one token (left-padded to 4 columns), row 1 starts the new prompt
    tokens = torch.cat(
        [torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:1, 6:7]], 1), new_prompt]
    )
    valid = torch.tensor([[False, False, False, True], [True] * 4])
    out = parcae_model(tokens, cache=cache, attention_mask=valid).logits
    continued = parcae_model(ids[:1, :7], num_steps=3).logits[:, -1]
    alone = parcae_model(new_prompt, num_steps=3).logits
    assert (out[0, -1] - continued).abs().max() < 1e-5
    assert (out[1] - alone[0]).abs().max() < 1e-5


def test_select_rows_keeps_and_reorders_sequences(parcae_model):
    ids = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(8))
    cache = parcae_model.new_cache(3, 9, 2)
    parcae_model(ids[:, :8], cache=cache)
    cache.select_rows([2, 0])
    last = parcae_model(ids[[2, 0], 8:], cache=cache).logits
    reference = parcae_model(ids[[2, 0]], num_steps=2).logits[:, -1:]
    assert cache.batch_size == 2 and (last - reference).abs().max() < 1e-5


def test_sharing_slot_maps():
    assert [CacheSharing.parse("full").slot(t, 4) for t in range(4)] == [0, 1, 2, 3]
    assert [CacheSharing.parse("ring:2").slot(t, 5) for t in range(5)] == [0, 1, 0, 1, 0]
    assert [CacheSharing.parse("last:2").slot(t, 5) for t in range(5)] == [0, 0, 0, 0, 1]
    assert [CacheSharing.parse("shared").slot(t, 3) for t in range(3)] == [0, 0, 0]
    assert CacheSharing.parse("ring:8").num_slots(4) == 4


@pytest.mark.parametrize("spec", ["ring", "ring:0", "last:x", "everything"])
def test_bad_sharing_spec_is_one_error(spec):
    with pytest.raises(PromptError, match="cache sharing"):
        CacheSharing.parse(spec)
