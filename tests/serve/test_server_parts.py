"""The server's parts without a server: the chat templates, the incremental text with stop
sequences, and `parcae serve`'s command line (its one-line errors, and one real process)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from parcae.cli import main
from parcae.data.chat_template import PLAIN_STOP, ChatTemplate, render_plain
from parcae.serve.detokenize import TextAssembler

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hello \n"},
    {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
    {"role": "user", "content": "Who?"},
]


def test_plain_template():
    assert render_plain(MESSAGES) == (
        "System: Be brief.\n\nUser: Hello\n\nAssistant: Hi.\n\nUser: Who?\n\nAssistant:"
    )
    assert ChatTemplate().stop_sequences == [PLAIN_STOP]


def test_plain_template_prompt_ids_start_with_bos(serve_tokenizer):
    ids = ChatTemplate().prompt_ids(MESSAGES, serve_tokenizer)
    assert ids[0] == serve_tokenizer.bos_id
    assert serve_tokenizer.decode(ids[1:]) == render_plain(MESSAGES)


def test_tokenizer_chat_template(tmp_path, serve_tokenizer):
    """A `chat_template` in tokenizer_config.json is rendered with jinja2 (special tokens in its
    text become their ids) and adds no stop sequence; a run directory's is found too."""
    template = (
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (tmp_path / "model").mkdir()
    found = ChatTemplate.find(tmp_path / "model", tmp_path)
    assert found.template == template and found.stop_sequences == []
    ids = found.prompt_ids(MESSAGES[:2], serve_tokenizer)
    assert ids[0] == serve_tokenizer.bos_id
    assert serve_tokenizer.eos_id in ids
    assert serve_tokenizer.decode(ids).endswith("<assistant>")
    assert ChatTemplate.find(tmp_path / "model").template is None  # none: the plain one


def test_tokenizer_chat_template_errors_are_prompt_errors(tmp_path, serve_tokenizer):
    from parcae.errors import PromptError

    template = "{{ raise_exception('no system messages') }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    with pytest.raises(PromptError, match="no system messages"):
        ChatTemplate.find(tmp_path).prompt_ids(MESSAGES, serve_tokenizer)
    with pytest.raises(PromptError, match="only text parts"):
        ChatTemplate().prompt_ids([{"role": "user", "content": [{"type": "image"}]}], None)


class CharTokenizer:
    """Token i is chr(i); token 0 decodes to a lone byte of a split character (U+FFFD)."""

    def decode(self, ids):
        return "".join("\ufffd" if i == 0 else chr(i) for i in ids)


def feed(assembler, text):
    return [assembler.feed(ord(c)) for c in text]


def test_stop_sequence_across_tokens():
    assembler = TextAssembler(CharTokenizer(), ["\n\nUser:"])
    # "\n\nUs" may begin the stop sequence: held back; "\n\nUser:" completes it: cut there
    out = feed(assembler, "ab\n\nUser: more")
    assert out[:2] == ["a", "b"] and all(piece == "" for piece in out[2:])
    assert assembler.stopped and assembler.text == "ab"


def test_held_prefix_released_when_it_is_not_a_stop():
    assembler = TextAssembler(CharTokenizer(), ["STOP", "xyz"])
    out = feed(assembler, "aSTx")
    assert out == ["a", "", "", "ST"]  # "ST" may begin "STOP" until "x", which may begin "xyz"
    assert assembler.feed(ord("!")) == "x!"
    assert assembler.finish() == "" and assembler.text == "aSTx!"
    assert not assembler.stopped


def test_split_character_held_back_until_complete():
    assembler = TextAssembler(CharTokenizer())
    assert assembler.feed(ord("a")) == "a"
    assert assembler.feed(0) == ""
    assert assembler.feed(ord("b")) == "\ufffdb"
    assert assembler.feed(0) == "" and assembler.finish() == "\ufffd"


def test_text_without_tokenizer_is_token_ids():
    assembler = TextAssembler(None)
    assert [assembler.feed(t) for t in (5, 17)] == ["5", " 17"]


# ----------------------------------------------------------------- parcae serve


def test_serve_without_the_extra_is_one_line(monkeypatch, capsys, serve_model_dir):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    assert main(["serve", "--model", str(serve_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "parcae serve needs the optional package 'uvicorn'" in err
    assert "pip install 'parcae[serve]'" in err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--port", "70000"], "--port must be in [0, 65535]"),
        (["--max-batch", "0"], "--max-batch must be a positive integer"),
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--num-steps", "0"], "--num-steps must be an integer in [1, 1024], got 0"),
        (["--num-steps", "5000"], "--num-steps must be an integer in [1, 1024], got 5000"),
        (["--num-steps", "40", "--max-num-steps", "8"], "--num-steps 40 is above --max-num-steps"),
        (["--adaptive", "-1"], "--adaptive must be a finite number >= 0"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_serve_bad_options_are_one_line(capsys, serve_model_dir, options, message):
    assert main(["serve", "--model", str(serve_model_dir), "--port", "0", *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_serve_missing_model_and_port_in_use(capsys, tmp_path, serve_model_dir):
    assert main(["serve", "--model", str(tmp_path / "nothing"), "--port", "0"]) == 2
    assert "no such model or run directory" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(serve_model_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


def test_serve_process(serve_model_dir):
    """`parcae serve` as a real process: it announces its address, answers, and stops on
    Ctrl-C with exit code 0 and no traceback. Ctrl-C in a terminal signals the whole process
    group (the server and its engine process), as here."""
    process = subprocess.Popen(
        [sys.executable, "-m", "parcae", "serve", "--model", str(serve_model_dir), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "the server exited early"
            match = re.search(r"serving parcae-served on (http://127\.0\.0\.1:\d+)", line)
            url = match and match.group(1)
        for _ in range(200):  # the socket is open; uvicorn answers once started
            try:
                health = httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health.json()["status"] == "ok"
        body = {"model": "parcae-served", "prompt": "To be", "max_tokens": 3, "temperature": 0}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 3
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0
        rest = process.stderr.read()
        assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
