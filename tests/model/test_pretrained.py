"""Saving and strict loading of model directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import parcae
from parcae.errors import CheckpointError
from tests.conftest import OFFICIAL_FIXTURE

SMALL = dict(vocab_size=128, d_model=64, ffn_dim=128, n_heads=2, context_length=32)


@pytest.mark.parametrize("preset", ["parcae-tiny", "gpt-tiny", "rdm-tiny"])
@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_round_trip_is_exact(tmp_path, preset, tied):
    model = parcae.create_model(preset, tie_embeddings=tied, **SMALL).eval()
    model.save_pretrained(tmp_path)
    loaded = parcae.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if tied:
        assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def _copy_fixture(tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(OFFICIAL_FIXTURE, target)
    return target


def _edit_weights(directory: Path, edit) -> None:
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, directory / "pytorch_model.bin")


def _assert_one_line(error, *needles):
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_key_is_named(tmp_path):
    directory = _copy_fixture(tmp_path)
    _edit_weights(directory, lambda s: s.pop("transformer.adapter.A_log"))
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(directory)
    _assert_one_line(error, "missing keys", "transformer.adapter.A_log")


def test_unexpected_and_misshaped_keys_are_all_named(tmp_path):
    directory = _copy_fixture(tmp_path)

    def edit(state):
        state["transformer.extra.weight"] = torch.zeros(3)
        state["transformer.C.weight"] = torch.zeros(64, 32)

    _edit_weights(directory, edit)
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(directory)
    _assert_one_line(
        error,
        "unexpected keys: transformer.extra.weight",
        "transformer.C.weight has shape (64, 32)",
    )


def test_missing_weights_file(tmp_path):
    directory = _copy_fixture(tmp_path)
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(directory)
    _assert_one_line(error, "no weights file", "model.safetensors")


def test_unreadable_config_and_corrupt_weights(tmp_path):
    directory = _copy_fixture(tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(directory)
    _assert_one_line(error, "config.json", "unreadable config")
    directory = _copy_fixture(tmp_path / "b")
    (directory / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(directory)
    _assert_one_line(error, "pytorch_model.bin", "unreadable weights")


def test_missing_directory_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such model or run directory"):
        parcae.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        parcae.from_pretrained(tmp_path)


def test_official_config_refusal_surfaces_as_checkpoint_error(tmp_path):
    directory = _copy_fixture(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["nonlin_name"] = "GELU"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(directory)
    _assert_one_line(error, "nonlin_name")


def test_run_directory_and_tokenizer_from_the_package(tmp_path):
    model = parcae.create_model("parcae-tiny", **SMALL).eval()
    model.save_pretrained(tmp_path / "run" / "model")
    loaded = parcae.from_pretrained(tmp_path / "run")  # as generate, eval and serve take it
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    tokenizer = parcae.Tokenizer.train(["to be or not to be"] * 4, vocab_size=270)
    assert tokenizer.encode_prompt("to be")[0] == tokenizer.bos_id


def test_loading_assigns_the_files_tensors_in_the_requested_dtype(tmp_path):
    model = parcae.create_model("parcae-tiny", **SMALL).eval()
    model.save_pretrained(tmp_path)
    loaded = parcae.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert not any(p.is_meta for p in loaded.parameters()) and not loaded.rope_cos.is_meta
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(torch.bfloat16)), key


def test_a_quantized_model_loads_through_the_registered_format(tmp_path, monkeypatch):
    """model.serialization hands a `quantization` entry to the format registered with it (the
    model layer imports no quantization code) and, with none registered, refuses in one line."""
    from parcae.model import serialization

    model = parcae.create_model("gpt-tiny", **SMALL).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    entry = {"scheme": "test", "group_size": 32}
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization": entry}))
    calls = []

    def load(built, quantization, state, source):
        calls.append((quantization, "transformer.wte.weight" in state, source))
        serialization.load_state_dict_strict(built, state, source)

    monkeypatch.setitem(
        serialization._QUANTIZED_FORMATS, "quantization", serialization.QuantizedFormat(None, load)
    )
    loaded = parcae.from_pretrained(tmp_path)
    assert calls == [(entry, True, str(tmp_path))]
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)

    monkeypatch.delitem(serialization._QUANTIZED_FORMATS, "quantization")
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(tmp_path)
    _assert_one_line(error, str(tmp_path), "is quantized", "no quantized format is registered")
