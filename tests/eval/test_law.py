"""The test-time depth law L(T) = L_inf + Z · exp(−z T) (`parcae.eval.law`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parcae.errors import DataError
from parcae.eval.law import fit_depth_law, laws_from_results, plot_depth_law

DEPTHS = np.arange(1, 33)
LOSS = (3.0, 1.5, 0.3)  # (L_inf, Z, z): a loss falling with depth
ACCURACY = (0.45, -0.3, 0.15)  # an accuracy-like metric rising with depth


def law_values(truth: tuple[float, float, float], depths) -> np.ndarray:
    l_inf, amplitude, rate = truth
    return l_inf + amplitude * np.exp(-rate * np.asarray(depths, dtype=np.float64))


def assert_recovers(law, truth, rel: float) -> None:
    assert law.l_inf == pytest.approx(truth[0], rel=rel)
    assert law.amplitude == pytest.approx(truth[1], rel=rel)
    assert law.rate == pytest.approx(truth[2], rel=rel)


@pytest.mark.parametrize("truth", [LOSS, ACCURACY], ids=["loss", "accuracy"])
def test_recovers_exact_parameters(truth):
    law = fit_depth_law(DEPTHS, law_values(truth, DEPTHS))
    assert_recovers(law, truth, rel=0.01)
    assert law.r2 == pytest.approx(1.0, abs=1e-9)
    assert law.t95 == pytest.approx(1 + math.log(20) / law.rate)
    assert law.depths == tuple(range(1, 33))


def test_recovers_parameters_from_the_usual_sparse_depths():
    depths = [4, 1, 16, 2, 8]  # any order; T0 = 1
    law = fit_depth_law(depths, law_values(LOSS, depths), metric="bpb")
    assert_recovers(law, LOSS, rel=0.01)
    assert law.depths == (1, 2, 4, 8, 16)
    assert law.values == pytest.approx(law_values(LOSS, [1, 2, 4, 8, 16]))
    assert law.t95 == pytest.approx(1 + math.log(20) / LOSS[2])


def test_t95_counts_from_the_smallest_fitted_depth():
    depths = [2, 3, 5, 9, 17]
    law = fit_depth_law(depths, law_values(ACCURACY, depths), metric="core")
    assert_recovers(law, ACCURACY, rel=0.01)
    assert law.t95 == pytest.approx(2 + math.log(20) / ACCURACY[2])
    gain = law.predict(2) - law.l_inf
    assert law.predict(law.t95) - law.l_inf == pytest.approx(0.05 * gain)


@pytest.mark.parametrize("truth", [LOSS, ACCURACY], ids=["loss", "accuracy"])
def test_recovers_parameters_from_noisy_repeated_measurements(truth):
    rng = np.random.default_rng(0)
    depths = np.repeat(DEPTHS, 2)  # two measurements per depth
    values = law_values(truth, depths) + rng.normal(0.0, 0.005, depths.shape)
    law = fit_depth_law(depths, values)
    assert law.l_inf == pytest.approx(truth[0], rel=0.01)
    assert law.amplitude == pytest.approx(truth[1], rel=0.05)
    assert law.rate == pytest.approx(truth[2], rel=0.05)
    assert 0.99 < law.r2 < 1.0
    assert len(law.depths) == 64


def test_predict_and_to_dict():
    law = fit_depth_law([1, 2, 4, 8], law_values(LOSS, [1, 2, 4, 8]), metric="bpb")
    grid = np.array([[1.0, 2.5], [6.0, 40.0]])
    predicted = law.predict(grid)
    assert predicted.shape == (2, 2)
    np.testing.assert_allclose(predicted, law_values(LOSS, grid), rtol=1e-6)
    record = json.loads(json.dumps(law.to_dict()))
    assert set(record) == {
        "metric",
        "l_inf",
        "Z",
        "z",
        "r2",
        "t95",
        "saturated",
        "depths",
        "values",
    }
    assert record["metric"] == "bpb"
    assert record["Z"] == law.amplitude and record["z"] == law.rate
    assert record["depths"] == [1, 2, 4, 8]


@pytest.mark.parametrize(
    "depths, values, message",
    [
        ([1, 1, 2, 2], [3.0, 3.1, 2.0, 2.1], "give at least 3 depths, got 2 distinct"),
        ([], [], "give at least 3 depths, got 0 distinct"),
        ([1, 2, 4], [3.0, float("nan"), 2.0], "values must be finite"),
        ([1, 2, 4], [3.0, float("inf"), 2.0], "values must be finite"),
        ([0, 1, 2, 4], [4.0, 3.0, 2.5, 2.0], "depths must be positive integers, got [0, 1, 2, 4]"),
        ([-1, 1, 2, 4], [4.0, 3.0, 2.5, 2.0], "depths must be positive integers"),
        ([1, 2.5, 4], [3.0, 2.5, 2.0], "depths must be positive integers"),
        ([1, 2, 4], [3.0, 2.5], "got 3 depths but 2 values"),
        ([1, 2, 4], [2.0, 2.0, 2.0], "the values are 2 at every depth"),
        ([1, 2, 3, 4], [1.1, 1.2, 1.3, 1.4], "values do not level off"),
    ],
)
def test_refuses_bad_input(depths, values, message):
    with pytest.raises(DataError) as error:
        fit_depth_law(depths, values)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_plot_writes_a_png(tmp_path):
    law = fit_depth_law(DEPTHS, law_values(ACCURACY, DEPTHS), metric="core")
    path = plot_depth_law(law, tmp_path / "plots" / "core.png", mean_recurrence=8, title="CORE")
    assert path == tmp_path / "plots" / "core.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert plot_depth_law(law, tmp_path / "plain.png").read_bytes().startswith(b"\x89PNG")


def results_dict() -> dict:
    depths = [1, 2, 4, 8, 16]
    return {
        "model": "runs/parcae",
        "results": [{"depth": d} for d in depths],
        # "fixed" is far off the curve: the fit would not recover LOSS if it were used
        "bpb": {**{str(d): float(v) for d, v in zip(depths, law_values(LOSS, depths))}, "fixed": 9},
        "loss": {"1": 4.0, "2": 3.5},
        "core": {str(d): float(v) for d, v in zip(depths, law_values(ACCURACY, depths))},
    }


def test_laws_from_results_fits_the_metrics_with_enough_depths():
    laws = laws_from_results(results_dict())
    assert set(laws) == {"bpb", "core"}
    assert laws["bpb"].metric == "bpb" and laws["core"].metric == "core"
    assert laws["bpb"].depths == (1, 2, 4, 8, 16)
    assert_recovers(laws["bpb"], LOSS, rel=0.01)
    assert_recovers(laws["core"], ACCURACY, rel=0.01)
    assert set(laws_from_results(results_dict(), metrics=("core",))) == {"core"}


def test_laws_from_results_refuses_when_nothing_can_be_fitted():
    fixed = {"model": "runs/gpt", "results": [], "bpb": {"fixed": 1.2}, "loss": {"fixed": 3.0}}
    with pytest.raises(DataError) as error:
        laws_from_results(fixed)
    message = str(error.value)
    assert "bpb has 0 depths" in message and "loss has 0 depths" in message
    assert "core absent" in message

    flat = {"bpb": {"1": 2.0, "2": 2.0, "4": 2.0}, "loss": {"1": 4.0, "2": 3.5}}
    with pytest.raises(DataError, match="bpb has 3 depths but .* at every depth"):
        laws_from_results(flat)


def test_a_curve_that_saturates_at_once_is_flagged():
    depths = [1, 2, 3, 4, 6, 8]
    law = fit_depth_law(depths, [3.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert law.saturated and law.l_inf == pytest.approx(2.0, abs=1e-6)
    assert not fit_depth_law(depths, [2 + math.exp(-0.5 * t) for t in depths]).saturated
