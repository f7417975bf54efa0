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
        outputs.append(model(ids[:, i:i + 1], cache=cache).logits)
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
