"""Config validation, presets and the official config mapping."""

from __future__ import annotations

import json

import pytest

import parcae
from parcae.errors import ConfigError
from tests.conftest import OFFICIAL_FIXTURE

FIXTURE_CONFIG = OFFICIAL_FIXTURE / "config.json"

PAPER_COUNTS = {
    "parcae-140m": 144_323_136,
    "parcae-370m": 388_003_328,
    "parcae-770m": 776_655_680,
    "parcae-1.3b": 1_338_591_744,
    "gpt-140m": 143_141_184,
    "gpt-370m": 385_903_104,
    "gpt-770m": 773_375_040,
    "gpt-1.3b": 1_333_868_544,
}


@pytest.mark.parametrize("name", PAPER_COUNTS)
def test_paper_presets_have_the_spec_parameter_counts(name):
    assert parcae.create_model(name, device="meta").num_params() == PAPER_COUNTS[name]


def test_tiny_presets_are_cpu_sized_and_gpt_tiny_shares_parcae_tiny_blocks():
    counts = {
        n: parcae.create_model(n, device="meta").num_params()
        for n in ("parcae-tiny", "gpt-tiny", "rdm-tiny")
    }
    assert all(1_000_000 < c < 10_000_000 for c in counts.values())
    d = parcae.preset_config("parcae-tiny").d_model
    # the baseline lacks only the injection (B, A_log, dt_bias), C and the prelude norm
    assert counts["parcae-tiny"] - counts["gpt-tiny"] == 2 * d * d + 3 * d
    rdm = parcae.preset_config("rdm-tiny")
    assert rdm.injection == "linear" and not rdm.prelude_norm


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(d_model=100, n_heads=3), "n_heads"),
        (dict(injection="gated"), "injection"),
        (dict(mean_recurrence=0), "mean_recurrence"),
        (dict(mean_recurrence=-2), "mean_recurrence"),
        (dict(mean_backprop_depth=0), "mean_backprop_depth"),
        (dict(n_kv_heads=4), "n_kv_heads"),
        (dict(n_core=0), "n_core"),
        (dict(state_init="random"), "state_init"),
        (dict(sampling_scheme="uniform"), "sampling_scheme"),
        (dict(depth_granularity="per-layer"), "depth_granularity"),
        (dict(discretization="rk4"), "discretization"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(logit_softcap=-1.0), "logit_softcap"),
    ],
)
def test_bad_config_raises_one_line_error_naming_the_field(fields, named):
    with pytest.raises(ConfigError) as error:
        parcae.create_model("parcae-tiny", device="meta", **fields)
    message = str(error.value)
    assert f"'{named}'" in message and "\n" not in message


def test_unknown_override_and_unknown_preset_are_refused():
    with pytest.raises(ConfigError, match="n_layerz"):
        parcae.create_model("parcae-tiny", device="meta", n_layerz=3)
    with pytest.raises(ConfigError, match="parcae-tiny"):
        parcae.create_model("parcae-huge", device="meta")


def test_config_dict_round_trip():
    for name in parcae.list_presets():
        config = parcae.preset_config(name)
        assert parcae.TransformerConfig.from_dict(config.to_dict()) == config


def test_official_config_round_trip_and_fixture_mapping():
    data = json.loads(FIXTURE_CONFIG.read_text())
    config = parcae.ParcaeConfig.from_official(data)
    assert (config.d_model, config.n_heads, config.ffn_dim) == (64, 2, 256)
    assert (config.n_prelude, config.n_core, config.n_coda) == (2, 2, 2)
    assert (config.mean_recurrence, config.mean_backprop_depth) == (4, 2)
    assert config.state_init == "zero" and config.injection == "diagonal"
    assert parcae.ParcaeConfig.from_official(config.to_official()) == config
    for name in ("parcae-140m", "rdm-tiny"):
        preset = parcae.preset_config(name)
        assert parcae.ParcaeConfig.from_official(preset.to_official()) == preset


@pytest.mark.parametrize(
    "field, value",
    [
        ("nonlin_name", "GELU"),
        ("bias", True),
        ("use_abacus", True),
        ("model_class_name", "Huginn"),
        ("recurrent_embedding_dimension", 128),
        ("injection_type", "gated"),
        ("rope_settings", {"use_rope": False, "rope_condense_ratio": 1, "rope_base": 50000}),
        ("a_new_field", 1),
    ],
)
def test_official_values_we_cannot_honour_are_refused_by_name(field, value):
    data = json.loads(FIXTURE_CONFIG.read_text())
    data[field] = value
    with pytest.raises(ConfigError) as error:
        parcae.ParcaeConfig.from_official(data)
    assert field.split(".")[0] in str(error.value) or "use_rope" in str(error.value)


def test_configs_the_official_format_cannot_express_are_refused():
    with pytest.raises(ConfigError, match="discretization"):
        parcae.preset_config("parcae-tiny", discretization="zoh").to_official()


@pytest.mark.parametrize(
    "preset, overrides, depth",
    [
        ("parcae-tiny", {}, 4),
        ("rdm-tiny", {"mean_recurrence": 6}, 6),
        ("parcae-140m", {}, 8),
        ("gpt-tiny", {}, None),
    ],
)
def test_default_depth_is_the_mean_recurrence_of_a_looped_model_and_none_for_a_gpt(
    preset, overrides, depth
):
    config = parcae.preset_config(preset, **overrides)
    assert config.default_depth == depth
    assert config.is_looped == (depth is not None)


def test_a_forward_without_a_depth_runs_the_default_depth():
    import torch

    small = dict(vocab_size=64, d_model=32, ffn_dim=64, n_heads=2, context_length=16)
    model = parcae.create_model("parcae-tiny", mean_recurrence=3, **small).eval()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        default = model(ids).logits
        assert torch.equal(default, model(ids, num_steps=model.config.default_depth).logits)
        assert not torch.equal(default, model(ids, num_steps=2).logits)
        assert model.new_cache(1, 16).num_steps == 3
    gpt = parcae.create_model("gpt-tiny", **small).eval()
    assert gpt.config.default_depth is None and gpt.new_cache(1, 16).num_steps == 0
