import pytest

from parcae.train.schedule import lr_multiplier, muon_momentum, weight_decay_multiplier


def test_trapezoid_warms_up_holds_then_decays_to_zero():
    values = [lr_multiplier(s, 10, warmup_steps=2, decay_fraction=0.5) for s in range(10)]
    assert values[:2] == [0.5, 1.0]
    assert values[2:5] == [1.0, 1.0, 1.0]
    assert values[5:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_decay_ends_at_the_final_fraction():
    assert lr_multiplier(10, 10, 0, 0.5, final_fraction=0.1) == pytest.approx(0.1)


def test_muon_momentum_ramps_then_holds():
    assert muon_momentum(0, 0.85, 0.95, 300) == 0.85
    assert muon_momentum(150, 0.85, 0.95, 300) == pytest.approx(0.90)
    assert muon_momentum(1000, 0.85, 0.95, 300) == 0.95


def test_weight_decay_decays_linearly_to_zero():
    assert [weight_decay_multiplier(s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
