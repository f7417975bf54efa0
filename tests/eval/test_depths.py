"""One forward at max(depths) reads every depth: equal to a separate forward per depth."""

import pytest
import torch

from parcae.errors import ConfigError
from parcae.eval.depths import at_depths, check_depths
from parcae.model.loop import relative_update


def test_every_depth_equals_its_own_forward(parcae_model):
    ids = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    depths = check_depths(parcae_model, [8, 1, 3, 3])
    assert depths == [1, 3, 8]
    with torch.no_grad():
        swept = at_depths(parcae_model, ids, depths, lambda out: out)
        for depth in depths:
            alone = parcae_model(ids, num_steps=depth)
            torch.testing.assert_close(swept[depth].logits, alone.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(swept[depth].state, alone.loop.final_state)
            torch.testing.assert_close(
                relative_update(swept[depth].state, swept[depth].previous),
                relative_update(alone.loop.final_state, alone.loop.previous_state),
            )
    assert list(swept) == depths


def test_a_fixed_depth_model_runs_once(gpt_model):
    ids = torch.randint(3, 320, (1, 10), generator=torch.Generator().manual_seed(1))
    assert check_depths(gpt_model, [1, 2, 4]) == [None]
    calls = []
    with torch.no_grad():
        swept = at_depths(gpt_model, ids, [None], lambda out: calls.append(out) or out.logits)
        torch.testing.assert_close(swept[None], gpt_model(ids).logits)
    assert len(calls) == 1 and calls[0].state is None


@pytest.mark.parametrize("bad", [[0], [-1], [2.5], [True], []])
def test_depths_must_be_positive_integers(parcae_model, bad):
    with pytest.raises(ConfigError, match="depth"):
        check_depths(parcae_model, bad)


def test_a_probe_needs_a_fixed_depth(parcae_model):
    with pytest.raises(ConfigError, match="num_steps"):
        parcae_model(torch.zeros(1, 4, dtype=torch.long), probe=lambda *args: None)
