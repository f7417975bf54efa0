"""`parcae flops`: parameters by stage (hand counts) and FLOPs per token (parcae.model.flops)."""

import json

import pytest

from parcae.cli import main
from parcae.model import create_model, preset_config
from parcae.model.budget import model_budget
from parcae.model.flops import (
    block_matmul_params,
    forward_flops_per_token,
    training_flops_per_token,
)


def test_stages_add_up_and_match_hand_counts():
    config = preset_config("parcae-tiny")
    budget = model_budget(config, 256, [1, 4])
    d, vocab = config.d_model, config.padded_vocab_size
    params = budget.params
    assert sum(params.values()) == budget.total_params == create_model(config, "meta").num_params()
    assert params["embeddings"] == vocab * d and params["head"] == 0  # tied
    assert params["C"] == d * d
    kv_width = config.n_kv_heads * config.head_dim
    owners = [i for i in range(config.total_layers) if config.has_value_embedding(i)]
    assert params["value_embeddings"] == len(owners) * vocab * kv_width
    for stage in ("prelude", "core", "coda"):
        layers = getattr(config, f"{stage}_layers")
        matmuls = sum(block_matmul_params(config, config.has_value_embedding(i)) for i in layers)
        norms = params[stage] - matmuls  # each block's RMSNorm weights (and QK-norm, if any)
        assert 0 <= norms <= 4 * d * len(layers)
    assert budget.train_flops == training_flops_per_token(config, 256)
    assert budget.forward_flops == {t: forward_flops_per_token(config, 256, t) for t in (1, 4)}


def test_a_gpt_has_one_stage_of_blocks_and_one_forward():
    budget = model_budget(preset_config("gpt-tiny"), 128, [1, 2])
    assert "blocks" in budget.params and "core" not in budget.params
    assert list(budget.forward_flops) == [None] and budget.expected_steps is None


def test_flops_command_prints_json_with_overrides(capsys):
    assert main(["flops", "parcae-tiny", "mean_recurrence=8", "--seq-len", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = preset_config("parcae-tiny", mean_recurrence=8)
    assert report["train_flops_per_token"] == pytest.approx(training_flops_per_token(config, 64))
    assert list(report["forward_flops_per_token"]) == ["1", "8", "16"]
    step = report["forward_flops_per_token"]["16"] - report["forward_flops_per_token"]["8"]
    assert step == pytest.approx(
        8 * (forward_flops_per_token(config, 64, 2) - forward_flops_per_token(config, 64, 1))
    )


def test_flops_reads_a_model_directory(tmp_path, capsys):
    model = create_model("parcae-tiny", d_model=64, n_heads=2, ffn_dim=128, vocab_size=300)
    model.save_pretrained(tmp_path / "m")
    assert main(["flops", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert f"{model.num_params():,d} parameters" in out and "forward at T=4" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["nonsense"], "neither a preset"),
        (["parcae-tiny", "mean_recurrence"], "expected key=value"),
        (["parcae-tiny", "d_model=-3"], "d_model"),
        (["parcae-tiny", "--depths", "0"], "positive integers"),
    ],
)
def test_bad_flops_requests_get_one_line(args, message, capsys):
    assert main(["flops", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
