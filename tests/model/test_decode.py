"""The cache's fixed-shape mode (`parcae.model.decode.FixedShapeCache`): the model's own forward
over it computes what the general cached forward computes, for several tokens at once and with
left padding too, and it refuses what it cannot run."""

import pytest
import torch

from parcae.errors import ConfigError
from parcae.model.decode import FixedShapeCache
from tests.infer.conftest import tiny_model
from tests.numerics import assert_as_accurate, float64_twin

PROMPT = torch.randint(300, (2, 7), generator=torch.Generator().manual_seed(5))
PADDED = torch.tensor([[False, False, True, True, True, True, True], [True] * 7])
MORE = torch.randint(300, (2, 3), generator=torch.Generator().manual_seed(6))


def fixed(cache, column: int) -> FixedShapeCache:
    """The fixed-shape mode over `cache`'s tensors, new columns from `column`."""
    return FixedShapeCache(
        cache.layout,
        cache.keys,
        cache.values,
        cache.valid,
        cache.positions,
        cache.state_table,
        torch.tensor([column]),
    )


@torch.no_grad()
def general(model, sharing):
    """Logits of a left-padded prompt, then of 3 more tokens, by the general cached forward."""
    cache = model.new_cache(2, 16, 3, sharing)
    first = model(PROMPT, cache=cache, attention_mask=PADDED).logits
    return first, model(MORE, cache=cache).logits


@torch.no_grad()
def fixed_shape(model, sharing):
    """The same through the fixed-shape mode (the caller commits the columns)."""
    cache = model.new_cache(2, 16, 3, sharing)
    first = model(PROMPT, cache=fixed(cache, 0), attention_mask=PADDED).logits
    cache.length = PROMPT.shape[1]
    return first, model(MORE, cache=fixed(cache, cache.length)).logits


@pytest.mark.parametrize("preset, sharing", [("parcae-tiny", "full"), ("parcae-tiny", "ring:2"),
                                             ("gpt-tiny", None)])  # fmt: skip
def test_fixed_shape_forward_equals_the_cached_forward(preset, sharing):
    model = tiny_model(preset)
    expected = general(model, sharing)
    actual = fixed_shape(model, sharing)
    exact = general(float64_twin(model), sharing)
    real = PADDED[:, :, None]  # a padding column's logits are not a token's
    for got, want, truth in zip(actual, expected, exact):
        if got.shape[1] == PROMPT.shape[1]:
            got, want, truth = (x.masked_fill(~real, 0) for x in (got, want, truth))
        assert_as_accurate(got, want, truth)


def test_fixed_shape_cache_refuses_an_exit_rule():
    parcae_model = tiny_model("parcae-tiny")
    cache = parcae_model.new_cache(2, 16, 3)
    every_token_stops = lambda h, h_prev, readout: torch.ones(h.shape[:2], dtype=torch.bool)  # noqa: E731
    with pytest.raises(ConfigError, match="no exit rule"):
        parcae_model(PROMPT, cache=fixed(cache, 0), exit_rule=every_token_stops)
