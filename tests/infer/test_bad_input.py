"""Bad input to `parcae generate`, `parcae chat` and `parcae convert official` (the contract of
tests/bad_input.py: exit 2, one line on stderr, no traceback, inputs untouched), nothing printed
on stdout before the refusal, and the same rules in the Python API (`generate`,
`load_for_inference`)."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from parcae.cli import main
from parcae.data.tokenizer import Tokenizer
from parcae.errors import CheckpointError, ConfigError, PromptError
from parcae.infer import generate
from parcae.infer.chat import REPLY
from parcae.infer.loading import load_for_inference
from tests.bad_input import checksum, refuse
from tests.conftest import OFFICIAL_FIXTURE
from tests.infer.conftest import TEXT, tiny_model


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    """`--device cuda` must be refused here whatever the machine: pretend it has no CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(autouse=True)
def quiet_stdin(monkeypatch):
    """A chat refused before it reads would leave this unread; one that reads ends at once."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/exit\n"))


def refuse_quietly(argv, capsys, monkeypatch, protect) -> str:
    """`refuse`, and nothing was written on stdout (no prompt echoed before the refusal)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    line = refuse(argv, capsys, protect=protect)
    assert out.getvalue() == "", f"{argv} printed {out.getvalue()!r} before refusing"
    return line


# ------------------------------------------------------------------ generate: options

OPTION_CASES = {
    # flag values that are wrong whatever the model
    "top-p zero": (["--prompt", "To be", "--top-p", "0"], "--top-p"),
    "top-p above one": (["--prompt", "To be", "--top-p", "1.5"], "--top-p"),
    "top-p negative": (["--prompt", "To be", "--top-p", "-0.1"], "--top-p"),
    "top-p nan": (["--prompt", "To be", "--top-p", "nan"], "--top-p"),
    "temperature negative": (["--prompt", "To be", "--temperature", "-1"], "--temperature"),
    "temperature nan": (["--prompt", "To be", "--temperature", "nan"], "--temperature"),
    "temperature inf": (["--prompt", "To be", "--temperature", "inf"], "--temperature"),
    "temperature tiny": (["--prompt", "To be", "--temperature", "1e-39"], "--temperature"),
    "prompt not UTF-8": (["--prompt", "To be \udcff"], "not valid UTF-8"),
    "temperature subnormal": (["--prompt", "To be", "--temperature", "5e-324"], "--temperature"),
    "top-k zero": (["--prompt", "To be", "--top-k", "0"], "--top-k"),
    "top-k negative": (["--prompt", "To be", "--top-k", "-3"], "--top-k"),
    "min-p above one": (["--prompt", "To be", "--min-p", "1.5"], "--min-p must be in [0, 1]"),
    "max-new-tokens zero": (["--prompt", "To be", "--max-new-tokens", "0"], "--max-new-tokens"),
    "max-new-tokens negative": (
        ["--prompt", "To be", "--max-new-tokens", "-1"],
        "--max-new-tokens",
    ),
    "max-new-tokens = context": (
        ["--prompt", "To be", "--max-new-tokens", "64"],
        "at most 63",
    ),
    "max-new-tokens huge": (
        ["--prompt-ids", "5", "--max-new-tokens", "1000000"],
        "does not fit the model's context",
    ),
    "num-steps zero": (["--prompt", "To be", "--num-steps", "0"], "--num-steps"),
    "num-steps negative": (["--prompt", "To be", "--num-steps", "-1"], "--num-steps"),
    "num-steps absurd": (
        ["--prompt", "To be", "--num-steps", str(10**9)],
        "--num-steps must be an integer in [1, 1024]",
    ),
    "num-steps just above the limit": (["--prompt-ids", "5", "--num-steps", "1025"], "1024"),
    "adaptive negative": (["--prompt", "To be", "--adaptive", "-1"], "--adaptive"),
    "adaptive nan": (["--prompt", "To be", "--adaptive", "nan"], "--adaptive"),
    "adaptive inf": (["--prompt", "To be", "--adaptive", "inf"], "--adaptive"),
    "cache-sharing ring:0": (["--prompt", "To be", "--cache-sharing", "ring:0"], "ring:0"),
    "cache-sharing nonsense": (["--prompt", "To be", "--cache-sharing", "nonsense"], "nonsense"),
    "cache-sharing last:x": (["--prompt", "To be", "--cache-sharing", "last:x"], "last:x"),
    "cache-sharing ring:-1": (["--prompt", "To be", "--cache-sharing", "ring:-1"], "ring:-1"),
    "cache-sharing full:2": (["--prompt", "To be", "--cache-sharing", "full:2"], "full:2"),
    "seed negative": (["--prompt", "To be", "--seed", "-1"], "--seed"),
    "seed beyond 64 bits": (["--prompt", "To be", "--seed", str(2**64)], "--seed"),
    "device without cuda": (["--prompt", "To be", "--device", "cuda"], "no cuda"),
    "device index": (["--prompt", "To be", "--device", "cuda:99"], "--device"),
    "device nonsense": (["--prompt", "To be", "--device", "foo"], "not a device"),
    "device meta": (["--prompt", "To be", "--device", "meta"], "does not run on"),
    # prompts
    "empty text prompt": (["--prompt", ""], "--prompt is empty"),
    "empty text prompt without BOS": (["--prompt", "", "--no-bos"], "--prompt is empty"),
    "prompt ids of separators only": (["--prompt-ids", " , "], "--prompt-ids is empty"),
    "prompt ids with letters": (["--prompt-ids", "abc"], "--prompt-ids"),
    "prompt ids with a float": (["--prompt-ids", "1.5"], "--prompt-ids"),
    "prompt ids negative": (["--prompt-ids", "5,-1"], "token id -1 outside the vocabulary"),
    "prompt id = vocab size": (["--prompt-ids", "300"], "token id 300 outside"),
    "prompt ids fill the context": (["--prompt-ids", ",".join(["5"] * 64)], "must be shorter"),
    "text prompt fills the context": (["--prompt", "Q" * 200], "must be shorter"),
    # usage errors (argparse)
    "num-steps not a number": (["--prompt", "To be", "--num-steps", "abc"], "--num-steps"),
    "unknown adaptive criterion": (
        ["--prompt", "To be", "--adaptive-criterion", "entropy"],
        "--adaptive-criterion",
    ),
    "both prompt kinds": (["--prompt", "To be", "--prompt-ids", "5"], "not allowed with"),
    "no prompt": ([], "required"),
}


@pytest.mark.parametrize("argv, message", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_generate_refuses_bad_options_before_printing(
    argv, message, model_dir, capsys, monkeypatch
):
    line = refuse_quietly(
        ["generate", "--model", str(model_dir), *argv], capsys, monkeypatch, [model_dir]
    )
    assert message in line


def test_gpt_refuses_num_steps_zero_too(tmp_path, capsys, monkeypatch):
    tiny_model("gpt-tiny").save_pretrained(tmp_path)
    line = refuse_quietly(
        ["generate", "--model", str(tmp_path), "--prompt-ids", "5", "--num-steps", "0"],
        capsys,
        monkeypatch,
        [tmp_path],
    )
    assert "--num-steps must be an integer in [1, 1024], got 0" in line


def test_text_prompt_without_tokenizer_is_one_error(tmp_path, parcae_model, capsys, monkeypatch):
    parcae_model.save_pretrained(tmp_path)
    line = refuse_quietly(
        ["generate", "--model", str(tmp_path), "--prompt", "hi"], capsys, monkeypatch, [tmp_path]
    )
    assert "--prompt-ids" in line


def test_default_max_new_tokens_fits_a_small_context(tmp_path, parcae_model, capsys):
    """The default (200) is lowered to what a 64-token context holds, not refused."""
    parcae_model.save_pretrained(tmp_path)  # no tokenizer: ids are printed, and no EOS
    assert main(["generate", "--model", str(tmp_path), "--prompt-ids", "5", "--seed", "0"]) == 0
    assert len(capsys.readouterr().out.split()) == 63


# ------------------------------------------------------------------ generate: the model path


def _save(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def _edit_config(**changes):
    def edit(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        _save(directory / "config.json", {**config, **changes})

    return edit


def _edit_weights(change):
    def edit(directory: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(directory / "model.safetensors")
        save_file(change(state), directory / "model.safetensors")

    return edit


def _truncate(fraction: float):
    def edit(directory: Path) -> None:
        data = (directory / "model.safetensors").read_bytes()
        (directory / "model.safetensors").write_bytes(data[: int(len(data) * fraction)])

    return edit


def _replace_weights(write):
    def edit(directory: Path) -> None:
        (directory / "model.safetensors").unlink()
        write(directory / "pytorch_model.bin")

    return edit


def _nan_table(state):
    state["transformer.wte.weight"][0, 0] = float("nan")
    return state


MODEL_CASES = {
    "config not JSON": (lambda d: (d / "config.json").write_text("{not json"), "unreadable"),
    "config a JSON list": (lambda d: _save(d / "config.json", [1, 2]), "JSON object"),
    "config not UTF-8": (
        lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00{"),
        "unreadable config",
    ),
    "config empty": (lambda d: (d / "config.json").write_text(""), "unreadable config"),
    "config field of the wrong type": (_edit_config(d_model="wide"), "'d_model'"),
    "config boolean field not a boolean": (_edit_config(qk_norm="yes"), "'qk_norm'"),
    "config unknown architecture": (_edit_config(architecture="rnn"), "'architecture'"),
    "config disagrees with the weights": (_edit_config(d_model=128), "does not match"),
    "config is a directory": (
        lambda d: ((d / "config.json").unlink(), (d / "config.json").mkdir()),
        "neither a model directory",
    ),
    "weights truncated to half": (_truncate(0.5), "unreadable weights"),
    "weights truncated to the header": (_truncate(0.01), "unreadable weights"),
    "weights empty": (_truncate(0.0), "unreadable weights"),
    "weights missing": (lambda d: (d / "model.safetensors").unlink(), "no weights file"),
    "weights a pickle of garbage": (
        _replace_weights(lambda f: f.write_bytes(b"garbage" * 10)),
        "unreadable weights",
    ),
    "weights a pickled list": (
        _replace_weights(lambda f: torch.save([1, 2], f)),
        "expected a state dict",
    ),
    "weights holding NaN": (_edit_weights(_nan_table), "NaN"),
    "weights of integers": (
        _edit_weights(lambda s: {k: v.long() for k, v in s.items()}),
        "not floating-point",
    ),
    "weights missing a tensor": (
        _edit_weights(lambda s: {k: v for k, v in s.items() if k != "transformer.C.weight"}),
        "missing keys: transformer.C.weight",
    ),
    "tokenizer corrupt": (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json"),
}


@pytest.mark.parametrize("edit, message", MODEL_CASES.values(), ids=MODEL_CASES.keys())
def test_generate_refuses_a_broken_model_directory(
    edit, message, model_dir, tmp_path, capsys, monkeypatch
):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    edit(broken)
    line = refuse_quietly(
        ["generate", "--model", str(broken), "--prompt", "To be"],
        capsys,
        monkeypatch,
        [broken, model_dir],
    )
    assert message in line


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no such model or run directory"),
        (lambda p: (p.write_bytes(b"\x00\xffgarbage"), p)[1], "got a file"),
        (lambda p: (p.mkdir(), p)[1], "neither a model directory"),
        (lambda p: ((p / "model").mkdir(parents=True), p)[1], "no model/config.json"),
    ],
    ids=["nonexistent", "a file of garbage", "an empty directory", "a run without a model"],
)
def test_generate_refuses_a_model_path_that_is_no_model(
    make, message, tmp_path, capsys, monkeypatch
):
    path = make(tmp_path / "given")
    line = refuse_quietly(
        ["generate", "--model", str(path), "--prompt-ids", "5"], capsys, monkeypatch, [tmp_path]
    )
    assert message in line


# ------------------------------------------------------------------ chat

CHAT_CASES = {
    "device without cuda": (["--device", "cuda"], "no cuda"),
    "device nonsense": (["--device", "gpu0"], "not a device"),
    "max-new-tokens zero": (["--max-new-tokens", "0"], "--max-new-tokens"),
    "max-new-tokens beyond the context": (["--max-new-tokens", "500"], "at most 63"),
    "num-steps zero": (["--num-steps", "0"], "--num-steps"),
    "temperature negative": (["--temperature", "-0.5"], "--temperature"),
    "temperature tiny": (["--temperature", "1e-39"], "--temperature"),
    "top-p zero": (["--top-p", "0"], "--top-p"),
    "cache-sharing ring:0": (["--cache-sharing", "ring:0"], "ring:0"),
    "seed negative": (["--seed", "-7"], "--seed"),
    "adaptive negative": (["--adaptive", "-0.1"], "--adaptive"),
}


@pytest.mark.parametrize("argv, message", CHAT_CASES.values(), ids=CHAT_CASES.keys())
def test_chat_refuses_bad_options_before_reading(argv, message, model_dir, capsys, monkeypatch):
    line = refuse_quietly(
        ["chat", "--model", str(model_dir), *argv], capsys, monkeypatch, [model_dir]
    )
    assert message in line
    assert sys.stdin.read() == "hello\n/exit\n"  # nothing was read


def test_chat_without_tokenizer_is_one_error(tmp_path, parcae_model, capsys, monkeypatch):
    parcae_model.save_pretrained(tmp_path)
    line = refuse_quietly(["chat", "--model", str(tmp_path)], capsys, monkeypatch, [tmp_path])
    assert "chat needs one" in line


def test_chat_skips_a_line_that_is_not_utf8_and_goes_on(model_dir, capsys, monkeypatch):
    data = b"To be\n\xff\xfe or not\nor not\n/exit\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code = main(["chat", "--model", str(model_dir), "--max-new-tokens", "3", "--temperature", "0"])
    captured = capsys.readouterr()
    assert code == 0
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "line 2" in errors[0] and "utf-8" in errors[0]
    assert "Traceback" not in captured.err
    assert captured.out.count(REPLY) == 2  # the two good lines were answered


# ------------------------------------------------------------------ convert official


@pytest.fixture
def source(tmp_path) -> Path:
    """A writable copy of the official fixture."""
    path = tmp_path / "official"
    shutil.copytree(OFFICIAL_FIXTURE, path)
    return path


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    return Tokenizer.train([TEXT], vocab_size=300).save(directory)


def _staging_left(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_convert_refuses_an_output_that_is_a_file(source, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.write_text("not a directory")
    line = refuse_quietly(
        ["convert", "official", str(source), str(out)], capsys, monkeypatch, [source, out]
    )
    assert "exists and is not a directory" in line
    assert out.read_text() == "not a directory"


def test_convert_refuses_a_non_empty_output_directory(source, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = refuse_quietly(
        ["convert", "official", str(source), str(out)], capsys, monkeypatch, [source, out]
    )
    assert "exists and is not empty" in line


@pytest.mark.parametrize("where", ["the source itself", "inside the source"])
def test_convert_refuses_to_write_into_its_source(where, source, capsys, monkeypatch):
    out = source if where == "the source itself" else source / "converted"
    refuse_quietly(["convert", "official", str(source), str(out)], capsys, monkeypatch, [source])
    assert where == "the source itself" or not out.exists()


def test_convert_refuses_an_output_below_a_file(source, tmp_path, capsys, monkeypatch):
    (tmp_path / "plain").write_text("x")
    line = refuse_quietly(
        ["convert", "official", str(source), str(tmp_path / "plain" / "out")],
        capsys,
        monkeypatch,
        [source, tmp_path / "plain"],
    )
    assert "is not a directory" in line


def _too_big_tokenizer(path: Path) -> Path:
    tokenizer = Tokenizer.train([TEXT], vocab_size=300)
    tokenizer.backend.add_tokens([f"<extra{i}>" for i in range(600)])
    return tokenizer.save(path)


TOKENIZER_CASES = {
    "missing": (lambda p: p / "nowhere.json", "no tokenizer at"),
    "a directory without tokenizer.json": (lambda p: (p.mkdir(), p)[1], "no tokenizer at"),
    "not JSON": (lambda p: (p.write_text("{oops"), p)[1], "not a valid tokenizer.json"),
    "JSON but no tokenizer": (lambda p: (p.write_text("{}"), p)[1], "not a valid tokenizer"),
    "not UTF-8": (lambda p: (p.write_bytes(b"\xff\xfe{}"), p)[1], "not a valid tokenizer"),
    "larger than the model's vocabulary": (_too_big_tokenizer, "more than the model's"),
}


@pytest.mark.parametrize("make, message", TOKENIZER_CASES.values(), ids=TOKENIZER_CASES.keys())
def test_convert_checks_the_tokenizer_before_writing(
    make, message, source, tmp_path, capsys, monkeypatch
):
    tokenizer = make(tmp_path / "tok")
    out = tmp_path / "out"
    line = refuse_quietly(
        ["convert", "official", str(source), str(out), "--tokenizer", str(tokenizer)],
        capsys,
        monkeypatch,
        [source, tmp_path / "tok"],
    )
    assert message in line
    assert not out.exists() and not _staging_left(tmp_path, "out")


def _official_config_edit(**changes):
    def edit(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        _save(directory / "config.json", {**config, **changes})

    return edit


def _truncate_official(directory: Path) -> None:
    weights = directory / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])


SOURCE_CASES = {
    "a file": (lambda d: (shutil.rmtree(d), d.write_text("x")), "got a file"),
    "an empty directory": (lambda d: (shutil.rmtree(d), d.mkdir()), "no config.json"),
    "config not JSON": (lambda d: (d / "config.json").write_text("]"), "unreadable config"),
    "an unsupported official field": (_official_config_edit(nonlin_name="GELU"), "nonlin_name"),
    "weights truncated": (_truncate_official, "unreadable weights"),
    "weights missing": (lambda d: (d / "pytorch_model.bin").unlink(), "no weights file"),
}


@pytest.mark.parametrize("edit, message", SOURCE_CASES.values(), ids=SOURCE_CASES.keys())
def test_convert_checks_the_source_before_writing(
    edit, message, source, tmp_path, capsys, monkeypatch
):
    edit(source)
    out = tmp_path / "out"
    line = refuse_quietly(
        ["convert", "official", str(source), str(out)], capsys, monkeypatch, [source]
    )
    assert message in line
    assert not out.exists()


def test_convert_refuses_a_model_already_in_parcae_format(model_dir, tmp_path, capsys, monkeypatch):
    line = refuse_quietly(
        ["convert", "official", str(model_dir), str(tmp_path / "out")],
        capsys,
        monkeypatch,
        [model_dir],
    )
    assert "already a parcae model directory" in line
    assert not (tmp_path / "out").exists()


def test_a_conversion_failing_midway_leaves_no_output(
    source, tmp_path, tokenizer_file, capsys, monkeypatch
):
    from transformers import PreTrainedTokenizerFast

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", disk_full)
    out = tmp_path / "deep" / "out"
    line = refuse(
        ["convert", "official", str(source), str(out), "--tokenizer", str(tokenizer_file)],
        capsys,
        protect=[source],
    )
    assert "No space left on device" in line and "nothing was left" in line
    assert not (tmp_path / "deep").exists()  # neither out, its staging copy, nor its parent


def test_convert_into_an_empty_directory_replaces_it(source, tmp_path, tokenizer_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    before = checksum(source)
    code = main(["convert", "official", str(source), str(out), "--tokenizer", str(tokenizer_file)])
    assert code == 0 and "converted" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not _staging_left(tmp_path, "out") and checksum(source) == before
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not left private like a temp dir


# ------------------------------------------------------------------ Python API


@pytest.mark.parametrize(
    "device, message",
    [("cuda", "no cuda"), ("cuda:1", "no cuda"), ("tpu", "not a device")],
)
def test_load_for_inference_refuses_a_device_this_machine_lacks(model_dir, device, message):
    with pytest.raises(ConfigError, match=message):
        load_for_inference(model_dir, device=device)


def test_load_for_inference_refuses_a_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such model"):
        load_for_inference(tmp_path / "missing")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_steps=10**9), r"num_steps must be an integer in \[1, 1024\], got 1000000000"),
        (dict(num_steps=2.5), "num_steps"),
        (dict(num_steps=True), "num_steps"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=1e-39), "temperature must be 0 .greedy. or a finite number >= 1e-06"),
        (dict(adaptive=float("inf")), "adaptive must be a finite number >= 0, got inf"),
        (dict(adaptive=-1.0), "adaptive must be a finite number >= 0"),
        (dict(top_p=1.5), "top_p"),
        (dict(cache_sharing="ring:0"), "cache sharing"),
    ],
)
def test_generate_refuses_bad_options_in_python(parcae_model, kwargs, message):
    with pytest.raises(PromptError, match=message):
        generate(parcae_model, [1, 2], 4, **kwargs)


def test_generate_refuses_num_steps_zero_for_a_gpt_too(gpt_model):
    with pytest.raises(PromptError, match="num_steps must be an integer in"):
        generate(gpt_model, [1, 2], 4, num_steps=0)


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.tensor([[1.0, 2.0]]), "integer token ids, got a torch.float32"),
        (torch.tensor([[True, False]]), "integer token ids, got a torch.bool"),
        (torch.tensor([[1, 300]]), "token id 300 outside the vocabulary"),
        (torch.tensor([[-4, 1]]), "token id -4 outside the vocabulary"),
        (torch.zeros(1, 2, 2, dtype=torch.long), "shape"),
    ],
)
def test_generate_refuses_bad_tensor_prompts(parcae_model, ids, message):
    with pytest.raises(PromptError, match=message):
        generate(parcae_model, ids, 4)
