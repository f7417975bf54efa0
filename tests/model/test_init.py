"""Our initialisation matches the official code's, tensor by tensor (ARCHITECTURE §1.3, §1.6).

The fixture (tests/fixtures/official/init-stats/stats.json) holds the statistics of every
parameter of the official Parcae built from the parcae-a config. A tensor the official code fills
deterministically (norms, zeros, the identity B, dt_bias) must be identical here: the same mean,
std, min and max to float32 rounding. A random tensor of n entries must have the same
distribution: each statistic may differ by Z standard errors of the difference of two
independent samples of size n (√2 times one sample's), with σ the official std:

    mean:      SE = σ / √n
    std:       SE = σ / √(2n)           (Gaussian; smaller for the lighter-tailed uniform)
    kurtosis:  SE = √(24 / n)           (Gaussian; smaller for the uniform)
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from parcae.model import ParcaeConfig, create_model
from parcae.model.official import official_to_fields
from tests.conftest import OFFICIAL_FIXTURE

STATS = OFFICIAL_FIXTURE.parent / "init-stats" / "stats.json"
Z = 6.0  # with ~60 tensors x 3 statistics, a false alarm has probability < 1e-6
FLOAT32_ROUNDING = 1e-6


def statistics(tensor: torch.Tensor) -> dict[str, float]:
    """The fixture's statistics (generate.py): population std, kurtosis E[(x-m)^4]/var^2."""
    x = tensor.detach().double().flatten()
    mean, var = x.mean(), x.var(unbiased=False)
    kurtosis = ((x - mean) ** 4).mean() / var**2 if var > 0 else torch.tensor(0.0)
    return {
        "mean": float(mean),
        "std": float(var.sqrt()),
        "min": float(x.min()),
        "max": float(x.max()),
        "kurtosis": float(kurtosis),
    }


@pytest.fixture(scope="module")
def official():
    return json.loads(STATS.read_text())["tensors"]


@pytest.fixture(scope="module")
def ours():
    fields = official_to_fields(json.loads((OFFICIAL_FIXTURE / "config.json").read_text()))
    torch.manual_seed(0)
    model = create_model(ParcaeConfig(**fields))
    return {name: param for name, param in model.named_parameters()}


def test_every_official_tensor_exists_here_with_its_shape(official, ours):
    assert set(ours) == set(official)
    for name, stats in official.items():
        assert list(ours[name].shape) == stats["shape"], name


def test_deterministic_tensors_are_identical(official, ours):
    for name, stats in official.items():
        if stats["random"]:
            continue
        mine = statistics(ours[name])
        for key in ("mean", "std", "min", "max"):
            assert mine[key] == pytest.approx(stats[key], abs=FLOAT32_ROUNDING), (name, key)


def test_random_tensors_have_the_official_distribution(official, ours):
    for name, stats in official.items():
        if not stats["random"]:
            continue
        mine, n, sigma = statistics(ours[name]), stats["n"], stats["std"]
        tolerance = {
            "mean": sigma / math.sqrt(n),
            "std": sigma / math.sqrt(2 * n),
            "kurtosis": math.sqrt(24 / n),
        }
        for key, standard_error in tolerance.items():
            assert abs(mine[key] - stats[key]) <= Z * math.sqrt(2) * standard_error, (
                name,
                key,
                mine[key],
                stats[key],
            )


def test_value_embeddings_and_gates_start_as_the_official_code_leaves_them(official, ours):
    tables = [name for name in official if name.startswith("value_embeds.")]
    gates = [name for name in official if name.endswith("ve_gate.weight")]
    assert len(tables) == len(gates) == 3
    for name in tables:  # nn.Embedding: N(0, 1)
        assert ours[name].std().item() == pytest.approx(1.0, abs=0.03)
    for name in gates:  # nn.Linear(32, kv heads): U(-1/sqrt(32), 1/sqrt(32))
        assert ours[name].abs().max().item() <= 1 / math.sqrt(32)
        assert ours[name].std().item() > 0
