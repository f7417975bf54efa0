"""Chat tuning, shown end to end: a tiny base model, chat-tuned for a few seconds on synthetic
conversations ("What is the capital of X?" -> a fixed answer), answers the questions it was
tuned on through `parcae chat` and through the server, where the base model does not; the tuned
model carries its chat template."""

from __future__ import annotations

import io
import json
import sys

import httpx
import pytest

from parcae.cli import main
from parcae.data.chat_template import ChatTemplate
from parcae.data.split import split_of
from parcae.infer.chat import REPLY
from parcae.train.loop import train

from .conftest import tiny_config

CAPITALS = {
    "Zorland": "Vexa",
    "Quibia": "Morrow",
    "Taskany": "Pell",
    "Ostrel": "Danbury",
    "Feyland": "Corvo",
    "Umbria Nova": "Listel",
}
PHRASINGS = ("What is the capital of {}?", "Name the capital of {}.", "Capital of {}?")
VAL_FRACTION = 0.2


def _conversation(question: str, answer: str) -> str:
    messages = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": f"{answer}."},
    ]
    return json.dumps({"messages": messages})


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    """The JSONL file, and the tuned-on (train split) questions with their answers."""
    lines = {
        _conversation(phrasing.format(country), capital): (phrasing.format(country), capital)
        for country, capital in CAPITALS.items()
        for phrasing in PHRASINGS
    }
    path = tmp_path_factory.mktemp("chats") / "capitals.jsonl"
    path.write_text("\n".join(lines) + "\n")
    held_in = [qa for line, qa in lines.items() if split_of(line, VAL_FRACTION) == "train"]
    return path, held_in


@pytest.fixture(scope="module")
def runs(data_dir, chats, tmp_path_factory):
    """(the base model directory, the chat-tuned model directory)."""
    root = tmp_path_factory.mktemp("chat-tuning")
    train(tiny_config(data_dir, root / "base"))
    config = tiny_config(
        data_dir,
        root / "tuned",
        init_from=str(root / "base" / "model"),
        data=f"sft:{chats[0]}",
        val_fraction=VAL_FRACTION,
        max_steps=60,
        batch_size=8,
        seq_len=64,
        lr=0.02,
        adam_lr=0.01,
        weight_decay=0.0,
        warmup_steps=5,
        eval_every=1000,
        checkpoint_every=1000,
        model_overrides={},
    )
    train(config)
    return root / "base" / "model", root / "tuned" / "model"


def _chat(model_dir, questions, monkeypatch, capsys) -> list[str]:
    """The replies of `parcae chat` to `questions`, each asked in a new conversation."""
    stdin = "".join(f"{q}\n/reset\n" for q in questions) + "/exit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    argv = ["chat", "--model", str(model_dir), "--temperature", "0", "--max-new-tokens", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    return [part.split("\n\n")[0] for part in out.split(REPLY)[1:]]


def test_the_tuned_model_is_saved_with_its_chat_template(runs):
    _, tuned = runs
    assert ChatTemplate.find(tuned).template is not None
    assert ChatTemplate.find(runs[0]).template is None  # the base model has none


def test_chat_answers_the_tuned_questions_where_the_base_model_does_not(
    runs, chats, monkeypatch, capsys
):
    base, tuned = runs
    questions = [q for q, _ in chats[1]]
    expected = [f"{a}." for _, a in chats[1]]
    assert len(questions) >= len(CAPITALS)
    assert _chat(tuned, questions, monkeypatch, capsys) == expected
    base_replies = _chat(base, questions, monkeypatch, capsys)
    assert sum(r == e for r, e in zip(base_replies, expected)) == 0


def test_the_server_answers_the_tuned_questions(runs, chats):
    from parcae.serve.server import ServerThread, load_state

    _, tuned = runs
    with ServerThread(load_state(tuned, max_batch=2, max_queue=8)) as server:
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        for question, answer in chats[1]:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 8,
                "temperature": 0,
            }
            response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
            choice = response.json()["choices"][0]
            assert choice["message"]["content"].strip() == f"{answer}."
            assert choice["finish_reason"] == "stop"
