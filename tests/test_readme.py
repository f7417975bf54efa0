"""The README's code blocks run as written, so that the README cannot drift from the code.

- Every ```python block runs, in a fresh directory, with the shared tiny stand-ins of `SUBSTITUTE`:
  a released model's name is served by a local Hub (tests/hub_server.py) holding a tiny Parcae
  with the released tokenizer layout; a server URL points at a tiny server; a training budget is
  cut to a few steps.
- Every `parcae ...` line of a ```bash block is parsed by the real command-line parser: an option
  or command that no longer exists fails here.
- The "Use a released model" commands run for real against the local Hub (the server's line is
  parsed only: it would serve until stopped; the server is exercised by the Python block that
  talks to it).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

import parcae
from parcae.cli import build_parser, main
from tests.conftest import BIGBENCH_DIR, OFFICIAL_TOKENIZER, SHAKESPEARE_DIR
from tests.hub_server import HubServer, Repo, directory_files, use_local_hub

README = Path(__file__).resolve().parents[1] / "README.md"
RELEASED = "SandyResearch/parcae-140m"
# What a block may not do in a test, and what stands in for it (block text -> test text).
SUBSTITUTE = {
    '"max_steps=50"': '"max_steps=2", "final_eval_batches=1", "eval_batch_size=2"',
    "http://127.0.0.1:8000/v1": "{server_url}/v1",
}


def code_blocks(language: str) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block of `language` in the README."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if current is None and line.strip() == f"```{language}":
            current, start = [], number
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def command_lines(text: str) -> list[str]:
    """The shell lines of a block, continuation backslashes joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def parcae_commands(text: str) -> list[list[str]]:
    """The arguments of every `parcae ...` command in a block (also after `&&`)."""
    commands = []
    for line in command_lines(text):
        for part in line.split("&&"):
            words = shlex.split(part)
            if words and words[0] == "parcae" and "..." not in words:
                commands.append(words[1:])
    return commands


@pytest.fixture(scope="module")
def released_repo(tmp_path_factory) -> dict[str, bytes]:
    """A tiny Parcae in a released model's place: the released tokenizer layout
    (tests/fixtures/official/tokenizer, vocabulary 512) and our weights."""
    directory = tmp_path_factory.mktemp("released") / "model"
    model = parcae.create_model(
        "parcae-tiny", vocab_size=512, d_model=64, ffn_dim=128, n_heads=2, context_length=512
    )
    model.save_pretrained(directory)
    for file in OFFICIAL_TOKENIZER.iterdir():
        (directory / file.name).write_bytes(file.read_bytes())
    return directory_files(directory)


@pytest.fixture
def local_hub(released_repo, tmp_path, monkeypatch):
    """The Hub serving RELEASED; the working directory a fresh one, corpora from the fixtures."""
    with HubServer({RELEASED: Repo({"main": released_repo})}) as server:
        use_local_hub(server.endpoint, tmp_path / "hf", monkeypatch)
        work = tmp_path / "work"  # a checkout's root: the README's commands run from there
        shutil.copytree(README.parent / "configs", work / "configs")
        monkeypatch.chdir(work)
        monkeypatch.setenv("PARCAE_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("PARCAE_SHAKESPEARE_DIR", str(SHAKESPEARE_DIR))
        monkeypatch.setenv("PARCAE_BIGBENCH_DIR", str(BIGBENCH_DIR))
        yield server


@pytest.fixture
def tiny_server(tmp_path):
    """A server on a tiny Parcae saved as `parcae-tiny` (the id the README's requests name)."""
    from parcae.serve.server import ServerThread, load_state
    from tests.infer.conftest import TEXT, tiny_model

    directory = tmp_path / "parcae-tiny"
    tiny_model("parcae-tiny", context_length=128).save_pretrained(directory)
    parcae.Tokenizer.train([TEXT], vocab_size=300).save(directory)
    with ServerThread(load_state(directory)) as running:
        yield running


def test_the_readme_has_the_blocks_this_test_reads():
    assert len(code_blocks("python")) >= 4
    assert any(RELEASED in text for _, text in code_blocks("bash"))
    for old in SUBSTITUTE:
        assert any(old in text for _, text in code_blocks("python")), f"{old!r} left the README"


@pytest.mark.parametrize("line, text", code_blocks("python"), ids=lambda v: str(v)[:12])
def test_python_block_runs(line, text, request, capsys):
    """Each Python block runs as written (with `SUBSTITUTE`'s stand-ins) and prints no error."""
    server_url = ""
    if "{server_url}" in "".join(SUBSTITUTE[k] for k in SUBSTITUTE if k in text):
        server_url = request.getfixturevalue("tiny_server").url
    request.getfixturevalue("local_hub")
    for old, new in SUBSTITUTE.items():
        text = text.replace(old, new.format(server_url=server_url))
    exec(compile(text, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [argv for _, text in code_blocks("bash") for argv in parcae_commands(text)],
    ids=lambda argv: " ".join(argv)[:60],
)
def test_every_parcae_command_parses(argv):
    """Every `parcae` line of the README names a command and options that exist."""
    build_parser().parse_args(argv)


def released_block() -> str:
    return next(text for _, text in code_blocks("bash") if f"--model {RELEASED}" in text)


@pytest.mark.parametrize(
    "argv",
    [argv for argv in parcae_commands(released_block()) if argv[0] != "serve"],
    ids=lambda argv: argv[0],
)
def test_released_model_commands_run(argv, local_hub, monkeypatch, capsys):
    """The "Use a released model" commands against the local Hub: chat reads `/exit`, training
    and evaluation run a few steps or items (the budget is the only change to the line)."""
    budget = {
        "train": ["max_steps=2", "final_eval_batches=1", "eval_batch_size=2", "seq_len=64"],
        "eval": ["--max-per-task", "2"],
        "generate": ["--max-new-tokens", "4"],
    }
    if argv[0] == "chat":
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO("Hello\n/exit\n"))
    assert main([*argv, *budget.get(argv[0], [])]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert local_hub.downloads  # the model came from the Hub, not from a local copy
