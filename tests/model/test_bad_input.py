"""Bad input to the model's Python API (forward, caches, loading, configs) raises a named parcae
error with a clear message, not an error from deep inside torch; and bad input to `parcae
flops` / `parcae presets` follows the CLI contract of tests/bad_input.py."""

from __future__ import annotations

import json
import time

import pytest
import torch

import parcae
from parcae.errors import CheckpointError, ConfigError, PromptError
from parcae.model.base import MAX_NUM_STEPS
from tests.bad_input import refuse

SMALL = dict(vocab_size=100, d_model=64, ffn_dim=128, n_heads=2, context_length=32)


@pytest.fixture(scope="module")
def looped():
    return parcae.create_model("parcae-tiny", **SMALL).eval()


@pytest.fixture(scope="module")
def gpt():
    return parcae.create_model("gpt-tiny", **SMALL).eval()


IDS = torch.tensor([[1, 2, 3, 4]])

# ------------------------------------------------------------------ forward: token ids

ID_CASES = {
    "id = vocab_size": (torch.tensor([[1, 100]]), "token id 100, outside the vocabulary"),
    "id in the padding of the table": (torch.tensor([[127]]), "token id 127"),
    "id far beyond the table": (torch.tensor([[1, 10**6]]), "token id 1000000"),
    "negative id": (torch.tensor([[-1, 5]]), "token id -1"),
    "float ids": (torch.tensor([[1.0, 2.0]]), "got a torch.float32 tensor"),
    "bool ids": (torch.tensor([[True, False]]), "got a torch.bool tensor"),
    "uint8 ids": (torch.tensor([[1, 2]], dtype=torch.uint8), "got a torch.uint8 tensor"),
    "one-dimensional ids": (torch.tensor([1, 2, 3]), "shape (B, S), got (3,)"),
    "three-dimensional ids": (torch.zeros(1, 2, 3, dtype=torch.long), "shape (B, S)"),
    "no tokens": (torch.zeros(1, 0, dtype=torch.long), "input_ids is empty"),
    "no rows": (torch.zeros(0, 4, dtype=torch.long), "input_ids is empty"),
    "a list": ([[1, 2, 3]], "must be a tensor of token ids, got list"),
}


@pytest.mark.parametrize("ids, message", ID_CASES.values(), ids=ID_CASES.keys())
@pytest.mark.parametrize("which", ["looped", "gpt"])
def test_forward_refuses_bad_token_ids(which, ids, message, request):
    model = request.getfixturevalue(which)
    with pytest.raises(PromptError) as error:
        model(ids)
    assert message in str(error.value) and "\n" not in str(error.value)


LABEL_CASES = {
    "label = vocab_size": (torch.tensor([[1, 2, 3, 100]]), "labels hold token id 100"),
    "negative label other than -100": (torch.tensor([[1, -5, 3, 4]]), "labels hold token id -5"),
    "float labels": (torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels must be int64"),
    "labels of another shape": (torch.tensor([[1, 2, 3]]), "labels have shape (1, 3)"),
}


@pytest.mark.parametrize("labels, message", LABEL_CASES.values(), ids=LABEL_CASES.keys())
def test_forward_refuses_bad_labels(looped, labels, message):
    with pytest.raises(PromptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        looped(IDS, labels=labels)


def test_ignored_labels_are_accepted(looped):
    assert looped(IDS, labels=torch.tensor([[-100, 2, 3, -100]])).loss is not None


def test_a_cached_decoding_step_checks_its_token_on_the_cpu(looped):
    cache = looped.new_cache(1, 8)
    looped(IDS, cache=cache)
    with pytest.raises(PromptError, match="token id 100"):
        looped(torch.tensor([[100]]), cache=cache)


# ------------------------------------------------------------------ forward: depth

STEP_CASES = {
    "zero": (0, "num_steps must be a positive integer, got 0"),
    "negative": (-1, "num_steps must be a positive integer, got -1"),
    "absurd": (10**9, f"above the limit of {MAX_NUM_STEPS}"),
    "just above the limit": (MAX_NUM_STEPS + 1, f"limit of {MAX_NUM_STEPS}"),
    "a float": (2.5, "got 2.5"),
    "a bool": (True, "got True"),
    "a string": ("4", "got '4'"),
}


@pytest.mark.parametrize("steps, message", STEP_CASES.values(), ids=STEP_CASES.keys())
@pytest.mark.parametrize("which", ["looped", "gpt"])
def test_forward_refuses_a_bad_depth_for_every_model(which, steps, message, request):
    model = request.getfixturevalue(which)
    with pytest.raises(ConfigError, match=message):
        model(IDS, num_steps=steps)


def test_a_gpt_still_ignores_a_valid_depth(gpt):
    assert torch.equal(gpt(IDS, num_steps=3).logits, gpt(IDS).logits)


@pytest.mark.parametrize("steps", [0, -2, MAX_NUM_STEPS + 1])
def test_new_cache_refuses_a_bad_depth(looped, steps):
    with pytest.raises(ConfigError, match="num_steps"):
        looped.new_cache(1, 8, num_steps=steps)


# ------------------------------------------------------------------ loading


@pytest.fixture(scope="module")
def saved(tmp_path_factory, looped):
    path = tmp_path_factory.mktemp("saved")
    looped.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "device, message",
    [("cuda", "no cuda"), ("cuda:7", "no cuda"), ("foo", "not a device"), ("meta", "does not")],
)
def test_from_pretrained_refuses_a_device_this_machine_lacks(saved, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        parcae.from_pretrained(saved, device=device)


@pytest.mark.parametrize("dtype", ["float16", torch.int64, torch.bool])
def test_from_pretrained_refuses_a_dtype_that_is_not_a_float_dtype(saved, dtype):
    with pytest.raises(ConfigError, match="dtype must be a floating-point torch.dtype"):
        parcae.from_pretrained(saved, dtype=dtype)


def _rewrite_weights(directory, change):
    from safetensors.torch import load_file, save_file

    state = load_file(directory / "model.safetensors")
    save_file(change(state), directory / "model.safetensors")


def test_from_pretrained_refuses_non_finite_weights(tmp_path, looped):
    looped.save_pretrained(tmp_path)

    def poison(state):
        state["transformer.C.weight"][0, 0] = float("inf")
        return state

    _rewrite_weights(tmp_path, poison)
    with pytest.raises(CheckpointError, match="transformer.C.weight holds NaN or infinite"):
        parcae.from_pretrained(tmp_path)


def test_from_pretrained_refuses_integer_weights(tmp_path, looped):
    looped.save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda state: {k: v.to(torch.int32) for k, v in state.items()})
    with pytest.raises(CheckpointError, match="holds torch.int32, not floating-point"):
        parcae.from_pretrained(tmp_path)


# ------------------------------------------------------------------ config field types

FIELD_CASES = {
    "boolean field given an int": (dict(qk_norm=1), "'qk_norm': must be true or false"),
    "boolean field given a string": (dict(prelude_norm="yes"), "'prelude_norm'"),
    "integer field given a bool": (dict(d_model=True), "'d_model': must be an integer in"),
    "depth given a bool": (dict(mean_recurrence=True), "'mean_recurrence'"),
    "number field given a string": (dict(norm_eps="small"), "'norm_eps': must be a number"),
    "infinite rope theta": (dict(rope_theta=float("inf")), "'rope_theta'"),
    "NaN softcap": (dict(logit_softcap=float("nan")), "'logit_softcap'"),
    "kv heads given a string": (dict(n_kv_heads="2"), "'n_kv_heads'"),
    "padded vocab given a float": (dict(padded_vocab_size=128.0), "'padded_vocab_size'"),
    "seed given a float": (dict(state_init_seed=0.5), "'state_init_seed'"),
    # sizes beyond their documented bound (model.config.UPPER_BOUNDS), refused before allocation
    "vocab of a billion": (dict(vocab_size=10**9), "'vocab_size': must be an integer in [1, "),
    "context of ten million": (dict(context_length=10**7), "'context_length'"),
    "width of a billion": (dict(d_model=2**30, n_heads=2), "'d_model'"),
    "ffn of a billion": (dict(ffn_dim=10**9), "'ffn_dim'"),
    "depth beyond inference": (dict(mean_recurrence=147_896), "'mean_recurrence'"),
    "backprop depth beyond": (dict(mean_backprop_depth=10**6), "'mean_backprop_depth'"),
    "a million core layers": (dict(n_core=10**6), "'n_core'"),
    "padding of a billion": (dict(padding_multiple=10**9), "'padding_multiple'"),
}


@pytest.mark.parametrize("fields, message", FIELD_CASES.values(), ids=FIELD_CASES.keys())
def test_config_fields_of_the_wrong_type_are_named(fields, message):
    with pytest.raises(ConfigError) as error:
        parcae.create_model("parcae-tiny", device="meta", **fields)
    assert message in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------ parcae flops / presets

FLOPS_CASES = {
    "unknown field": (["parcae-tiny", "d_modle=64"], "unknown config field(s) for parcae: d_modle"),
    "override without a key": (["parcae-tiny", "=64"], "expected key=value"),
    "override not YAML": (["parcae-tiny", "d_model=["], "not a YAML scalar"),
    "override of the wrong type": (["parcae-tiny", "qk_norm=7"], "'qk_norm'"),
    "override naming no architecture": (["parcae-tiny", "architecture=rnn"], "'architecture'"),
    "seq-len zero": (["parcae-tiny", "--seq-len", "0"], "--seq-len must be in [1, 256]"),
    "seq-len negative": (["parcae-tiny", "--seq-len", "-3"], "--seq-len"),
    "seq-len beyond the context": (["parcae-tiny", "--seq-len", "100000"], "context length"),
    "seq-len not a number": (["parcae-tiny", "--seq-len", "long"], "--seq-len"),
    "depths not numbers": (["parcae-tiny", "--depths", "a,b"], "--depths"),
    "depths reversed range": (["parcae-tiny", "--depths", "5..2"], "--depths"),
    "depths negative": (["parcae-tiny", "--depths", "-1"], "--depths"),
    "depth above the limit": (["parcae-tiny", "--depths", "2000"], "limit of 1024"),
}


@pytest.mark.parametrize("argv, message", FLOPS_CASES.values(), ids=FLOPS_CASES.keys())
def test_flops_refuses_bad_input(argv, message, capsys):
    assert message in refuse(["flops", *argv], capsys)


def test_flops_refuses_an_absurd_depth_range_at_once(capsys):
    start = time.monotonic()
    assert "limit of 1024" in refuse(["flops", "parcae-tiny", "--depths", "1..1000000000"], capsys)
    assert time.monotonic() - start < 5  # not after expanding a billion depths


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no config.json"),
        ("{not json", "unreadable config"),
        (json.dumps({"architecture": "parcae", "d_model": -1}), "'d_model'"),
        ("[" * 100_000 + "]" * 100_000, "unreadable config"),
        (json.dumps({"architecture": "parcae", "context_length": 10**7}), "'context_length'"),
        (json.dumps({"architecture": "parcae", "model_type": "llama"}), "model_type"),
    ],
    ids=["no config", "config not JSON", "config with a bad field", "deep", "huge", "not ours"],
)
def test_flops_refuses_a_broken_model_directory(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    assert message in refuse(["flops", str(tmp_path)], capsys, protect=[tmp_path])


def test_a_misspelt_key_in_a_saved_config_is_refused_by_name(tmp_path, looped, capsys):
    """Every model we save carries model_type; its config.json keys are checked all the same."""
    looped.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "parcae"
    config["mean_recurence"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown config field.*mean_recurence"):
        parcae.from_pretrained(tmp_path)
    assert "mean_recurence" in refuse(["flops", str(tmp_path)], capsys, protect=[tmp_path])


def test_presets_takes_no_arguments(capsys):
    assert "unrecognized arguments" in refuse(["presets", "parcae-tiny"], capsys)
