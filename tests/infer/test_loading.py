"""A model directory in the released layout (tokenizer.json + tokenizer_config.json with its
special-token names and chat template, tests/fixtures/official/tokenizer) loaded and used by
every command: generate, chat, eval (bpb) and serve."""

from __future__ import annotations

import io
import json
import shutil
import sys

import httpx
import numpy as np
import pytest
import torch

import parcae
from parcae.cli import main
from parcae.data.prepare import prepare_dataset
from parcae.data.tokenizer import Tokenizer
from parcae.infer.loading import load_for_inference
from tests.conftest import OFFICIAL_TOKENIZER, SHAKESPEARE_DIR
from tests.infer.conftest import tiny_model

PROMPT = "Shall I compare thee"


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    """A tiny random Parcae for the released tokenizer (vocabulary 512), saved beside it."""
    directory = tmp_path_factory.mktemp("released") / "model"
    tiny_model("parcae-tiny", vocab_size=512).save_pretrained(directory)
    for file in OFFICIAL_TOKENIZER.iterdir():
        shutil.copy(file, directory)
    return directory


def test_loading_finds_the_released_tokenizer(released_dir):
    model, tokenizer = load_for_inference(released_dir)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2)
    assert tokenizer.chat_template is not None and model.config.vocab_size == 512


def test_generate_encodes_text_with_bos_first(released_dir, capsys):
    argv = ["generate", "--model", str(released_dir), "--prompt", PROMPT]
    assert main([*argv, "--temperature", "0", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    model, tokenizer = load_for_inference(released_dir)
    ids = parcae.generate(
        model, [tokenizer.encode_prompt(PROMPT)], max_new_tokens=6, temperature=0.0
    )
    assert out.rstrip("\n") == tokenizer.decode(ids[0][1:])  # the text after BOS


def test_chat_runs_on_the_released_tokenizer(released_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Shall I\n/exit\n"))
    argv = ["chat", "--model", str(released_dir), "--max-new-tokens", "4", "--temperature", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip()


def test_bpb_counts_the_bytes_of_the_text_and_none_for_bos(released_dir, tmp_path):
    data = tmp_path / "data"
    tokenizer = Tokenizer.load(released_dir)
    manifest = prepare_dataset(str(SHAKESPEARE_DIR), released_dir, data, progress=False)
    lengths = torch.from_numpy(tokenizer.token_byte_lengths())
    val = [
        torch.from_numpy(np.fromfile(shard, dtype=manifest["dtype"]).astype(np.int64))
        for shard in sorted(data.glob("val_*.bin"))
    ]
    assert int(sum(lengths[tokens].sum() for tokens in val)) == manifest["splits"]["val"]["bytes"]
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(released_dir), "--tasks", "bpb", "--data", str(data)]
    assert (
        main([*argv, "--depths", "2", "--bpb-batches", "2", "--no-progress", "--out", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["bpb"]["2"] > 0


def test_serve_renders_the_tokenizers_chat_template(released_dir):
    from parcae.serve.server import ServerThread, load_state

    state = load_state(released_dir, max_num_steps=8)
    messages = [{"role": "user", "content": "Hello"}]
    tokenizer = Tokenizer.load(released_dir)
    expected = tokenizer.encode("<|user|>Hello<|/user|><|assistant|>")
    assert state.template.prompt_ids(messages, tokenizer) == [tokenizer.bos_id, *expected]
    running = ServerThread(state).start()
    try:
        body = {"model": "model", "messages": messages, "max_tokens": 4, "temperature": 0}
        reply = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=60).json()
    finally:
        running.stop()
    assert reply["usage"]["prompt_tokens"] == len(expected) + 1, reply
