"""MFU: FLOPs of the depths a step drew, against a robust peak, never above 100%."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from parcae import perf
from parcae.model import DepthPlan, preset_config
from parcae.model.flops import forward_flops_per_token, plan_depth, training_flops_per_token
from parcae.train import metrics as metrics_module
from parcae.train.distributed import DistInfo
from parcae.train.metrics import Metrics, read_metrics
from tests.train.conftest import TINY_MODEL, tiny_config

SEQ = 64


def test_a_plan_of_k_gradient_steps_costs_three_forwards_at_depth_k():
    config = preset_config("parcae-tiny", **TINY_MODEL)
    for k in (1, 3, 7):
        depth = plan_depth(DepthPlan.fixed(4, k))
        assert training_flops_per_token(config, SEQ, depth) == pytest.approx(
            3 * forward_flops_per_token(config, SEQ, k)
        )


def test_no_gradient_steps_cost_one_forward_step_each():
    config = preset_config("parcae-tiny", **TINY_MODEL)
    step = forward_flops_per_token(config, SEQ, 2) - forward_flops_per_token(config, SEQ, 1)
    plan = DepthPlan(torch.tensor([0, 4]), torch.tensor([2, 2]), torch.zeros(2, dtype=torch.long))
    without = DepthPlan(torch.tensor([0, 0]), torch.tensor([2, 2]), plan.noise_seeds)
    extra = training_flops_per_token(config, SEQ, plan_depth(plan)) - training_flops_per_token(
        config, SEQ, plan_depth(without)
    )
    assert extra == pytest.approx(2 * step)  # a mean of 2 no-gradient steps per row


def test_the_peak_is_the_best_of_its_trials_and_of_earlier_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path))
    windows = iter([3e9, 9e9, 5e9, 2e9, 4e9, 1e9, 20e9, 1e9, 1e9])
    monkeypatch.setattr(perf, "matmul_peak_flops", lambda *args, **kwargs: next(windows))
    assert perf.peak_flops(torch.float32, "cpu", trials=3) == 9e9
    assert perf.peak_flops(torch.float32, "cpu", trials=3) == 9e9  # a slow run: 4e9 at best
    assert perf.peak_flops(torch.float32, "cpu", trials=3) == 20e9
    stored = json.loads((tmp_path / perf.PEAK_CACHE_FILE).read_text())
    assert list(stored.values()) == [20e9]
    assert f"{torch.get_num_threads()} threads | cpu | float32" in next(iter(stored))


def test_an_unreadable_peak_cache_is_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path))
    (tmp_path / perf.PEAK_CACHE_FILE).write_text("{not json")
    monkeypatch.setattr(perf, "matmul_peak_flops", lambda *args, **kwargs: 7e9)
    assert perf.peak_flops(torch.float32, "cpu") == 7e9
    assert list(json.loads((tmp_path / perf.PEAK_CACHE_FILE).read_text()).values()) == [7e9]


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
    ],
)
def test_known_gpus_use_their_data_sheet_bf16_peak(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert perf.nominal_peak_flops(torch.bfloat16, "cuda:0") == peak
    assert perf.nominal_peak_flops(torch.float32, "cuda:0") is None


def test_a_cpu_has_no_nominal_peak():
    assert perf.nominal_peak_flops(torch.bfloat16, "cpu") is None


def test_mfu_never_exceeds_one_even_against_an_underestimated_peak(data_dir, tmp_path, monkeypatch):
    """The peak is raised to the fastest FLOP rate a step reached: against a 1 FLOP/s peak,
    each step reads its rate over the best rate so far."""
    metrics_module._peak_flops.cache_clear()
    monkeypatch.setattr(metrics_module, "peak_flops", lambda dtype, device: 1.0)
    config = tiny_config(data_dir, tmp_path / "run")
    model = SimpleNamespace(
        dtype=torch.float32, device=torch.device("cpu"), params=1, flops_per_token=1.0
    )
    metrics = Metrics(config, DistInfo())
    try:
        metrics.open(model, data_dir, step=0, total_steps=4)
        values = dict(loss=1.0, lr=0.1, lr_factor=1.0, tokens=0, grad_norm=1.0, skipped=0)
        for step, (seconds, flops) in enumerate(
            [(2.0, 100.0), (1.0, 100.0), (4.0, 100.0), (1.0, 400.0)], 1
        ):
            metrics.log_step(
                step, seconds, force=False, flops_per_token=flops, mean_depth=None, **values
            )
        metrics.close()
    finally:
        metrics_module._peak_flops.cache_clear()
    mfu = [r["mfu"] for r in read_metrics(tmp_path / "run")]
    assert mfu == pytest.approx([1.0, 1.0, 0.25, 1.0])
