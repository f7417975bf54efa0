"""`parcae generate` / `parcae chat`: streaming output, path resolution, one-line errors."""

import io
import re
import shutil
import sys

from parcae.cli import main
from parcae.infer import generate
from parcae.infer.chat import BANNER, REPLY
from tests.conftest import OFFICIAL_FIXTURE


def test_generate_streams_the_greedy_continuation(model_dir, parcae_model, tokenizer, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(model_dir),
            "--prompt",
            "To be",
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ]
    )
    assert code == 0
    prompt = [tokenizer.bos_id, *tokenizer.encode("To be")]
    ids = generate(parcae_model, prompt, 6, temperature=0, eos_token_id=tokenizer.eos_id)
    expected = (
        "To be"
        + tokenizer.decode([t for t in ids[0, len(prompt) :].tolist() if t != tokenizer.eos_id])
        + "\n"
    )
    assert capsys.readouterr().out == expected


def test_generate_accepts_a_run_directory_and_prompt_ids(tmp_path, model_dir, capsys):
    shutil.copytree(model_dir, tmp_path / "run" / "model")
    code = main(
        [
            "generate",
            "--model",
            str(tmp_path / "run"),
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "3",
            "--seed",
            "0",
            "--adaptive",
            "0.01",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    steps = re.search(
        r"adaptive exit: ([\d.]+) loop steps per token \(at most (\d+)\)", captured.err
    )
    assert steps and 1 <= float(steps[1]) <= int(steps[2])


def test_chat_answers_each_line_shows_its_commands_and_exits(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("To be\n/reset\nor not\n/exit\nignored\n"))
    code = main(["chat", "--model", str(model_dir), "--max-new-tokens", "4", "--temperature", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(BANNER) and "/reset" in BANNER and "/exit" in BANNER
    assert out.count(REPLY) == 2 and out.endswith("\n\n")  # a blank line after each reply


def test_generate_from_an_official_checkpoint_with_prompt_ids(official, capsys):
    model, expected = official
    prompt = expected["greedy_prompt"][0].tolist()
    code = main(
        [
            "generate",
            "--model",
            str(OFFICIAL_FIXTURE),
            "--prompt-ids",
            ",".join(map(str, prompt)),
            "--temperature",
            "0",
            "--num-steps",
            "4",
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    printed = [int(token) for token in capsys.readouterr().out.split()]
    assert printed == expected["greedy_tokens"][0, len(prompt) :].tolist()
