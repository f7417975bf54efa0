"""The readers of user files (`parcae.values`: YAML and JSON) and the config readers built on
them, fuzzed with Hypothesis (fixed seed, bounded examples): whatever the input, a value or one
`ParcaeError` (a `yaml.YAMLError` / `ValueError` from the bare readers), never another exception,
never unbounded work."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parcae.errors import ParcaeError
from parcae.model.config import TransformerConfig
from parcae.model.serialization import read_config
from parcae.scaling.sweep import load_sweep
from parcae.train.config import FIELDS, load_config
from parcae.values import parse_json, read_yaml

FUZZ = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODEL_FIELDS = ["vocab_size", "context_length", "d_model", "ffn_dim", "n_heads", "n_kv_heads",
                "mean_recurrence", "n_core", "n_prelude", "injection", "qk_norm", "rope_theta",
                "architecture", "model_type", "padded_vocab_size", "mean_recurence"]  # fmt: skip

texts = st.text(st.characters(categories=["L", "N", "P", "S", "Z", "Cc"]), max_size=20)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    texts,
    st.sampled_from([0, 1, 2, 64, 10**7, 10**9, 147_896, "1e13", "yes", "inf", ".nan"]),
)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_read_yaml_gives_a_value_or_a_yaml_error(text):
    try:
        read_yaml(text)
    except yaml.YAMLError:
        pass


@pytest.mark.parametrize("depth", [10, 100_000])
def test_read_yaml_refuses_aliases_and_deep_nesting_in_one_error(depth):
    with pytest.raises(yaml.YAMLError):
        read_yaml("a: &a [1]\nb: *a\n" if depth == 10 else "[" * depth)


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
def test_parse_json_gives_a_value_or_a_value_error(raw):
    try:
        parse_json(raw)
    except ValueError as error:
        assert "\n" not in str(error)


@FUZZ
@given(data=st.dictionaries(st.sampled_from(sorted(FIELDS)) | texts, values, max_size=5))
def test_a_training_config_file_loads_or_is_one_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("train") / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_config(path)
    except ParcaeError as error:
        assert "\n" not in str(error)


@FUZZ
@given(data=st.dictionaries(st.sampled_from(MODEL_FIELDS) | texts, values, max_size=5))
def test_a_model_config_json_reads_or_is_one_error(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("model")
    (directory / "config.json").write_text(json.dumps({"architecture": "parcae", **data}))
    try:
        config = read_config(directory)
    except ParcaeError as error:
        assert "\n" not in str(error)
        return
    assert config.context_length <= 1 << 20 and config.vocab_size <= 1 << 21


@FUZZ
@given(data=st.dictionaries(st.sampled_from(MODEL_FIELDS), values, max_size=4))
def test_model_config_fields_build_or_are_one_config_error(data):
    try:
        TransformerConfig.from_dict({"architecture": "gpt", **data})
    except ParcaeError as error:
        assert "\n" not in str(error)


GRID = st.dictionaries(
    st.sampled_from(["flops_budget", "mean_recurrence", "seed", "mean_backprop_depth"]) | texts,
    st.lists(values, max_size=4) | values,
    max_size=4,
)


@FUZZ
@given(data=st.fixed_dictionaries({"grid": GRID}, optional={"overrides": values, "out": values}))
def test_a_sweep_file_loads_or_is_one_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sweep") / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        sweep = load_sweep(path)
    except ParcaeError as error:
        assert "\n" not in str(error)
        return
    assert len(sweep.points()) <= 10_000
