"""Models named by Hub repo (`parcae.model.hub`), downloaded for real from a local HTTP server
that answers as the Hub does (tests/hub_server.py), then read offline from the cache."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import constants

import parcae
from parcae.cli import main
from parcae.errors import CheckpointError
from parcae.model.hub import resolve_model_dir
from tests.conftest import OFFICIAL_FIXTURE
from tests.hub_server import HubServer, Repo, directory_files, use_local_hub

REPO = "SandyResearch/parcae-a"
SMALL = dict(vocab_size=128, d_model=64, ffn_dim=128, n_heads=2, context_length=32)


def official_release_files() -> dict[str, bytes]:
    """The official fixture as the released repos lay it out: config.json with `_class_name`
    (written by the official save_pretrained) and the pickled pytorch_model.bin."""
    files = directory_files(OFFICIAL_FIXTURE)
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "_class_name": "ParcaeConfig"}).encode()
    return {name: files[name] for name in ("config.json", "pytorch_model.bin")}


@pytest.fixture
def ours(tmp_path):
    """A tiny model saved in our layout (config.json + model.safetensors)."""
    model = parcae.create_model("parcae-tiny", **SMALL).eval()
    model.save_pretrained(tmp_path / "ours")
    return model, directory_files(tmp_path / "ours")


@pytest.fixture
def hub(tmp_path, monkeypatch, ours):
    """The local Hub serving REPO (main: the official layout; v1: ours), `org/no-weights`
    (a config only) and nothing else; huggingface_hub pointed at it with an empty cache."""
    repos = {
        REPO: Repo({"main": official_release_files(), "v1": ours[1]}),
        "org/no-weights": Repo({"main": {"config.json": ours[1]["config.json"]}}),
    }
    with HubServer(repos) as server:
        use_local_hub(server.endpoint, tmp_path / "hf", monkeypatch)
        yield server


def go_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(
        0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model(ids, num_steps=2).logits


def test_official_release_by_name_then_offline_from_the_cache(hub, monkeypatch):
    expected = logits(parcae.from_pretrained(OFFICIAL_FIXTURE))
    assert torch.equal(logits(parcae.from_pretrained(REPO)), expected)
    assert sorted(hub.downloads) == ["config.json", "pytorch_model.bin"]
    go_offline(monkeypatch)
    hub.downloads.clear()
    assert torch.equal(logits(parcae.from_pretrained(REPO)), expected)
    assert hub.downloads == []


def test_revision_picks_our_layout(hub, ours):
    model, _ = ours
    for loaded in (
        parcae.from_pretrained(f"{REPO}@v1"),
        parcae.from_pretrained(REPO, revision="v1", dtype=torch.float32),
    ):
        assert loaded.config == model.config
        assert torch.equal(logits(loaded), logits(model))


def test_local_directory_wins_over_the_hub(hub, tmp_path, monkeypatch, ours):
    model, files = ours
    local = tmp_path / "cwd" / REPO
    local.mkdir(parents=True)
    for name, data in files.items():
        (local / name).write_bytes(data)
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_model_dir(REPO) == local.relative_to(tmp_path / "cwd")
    assert torch.equal(logits(parcae.from_pretrained(REPO)), logits(model))
    assert hub.downloads == []


@pytest.mark.parametrize(
    "ref, needles",
    [
        ("org/missing", ["org/missing", "nor a model repo on the Hub"]),
        (f"{REPO}@v9", [f"{REPO}@v9", "no revision 'v9'"]),
        ("org/no-weights", ["org/no-weights", "no weights file", "pytorch_model.bin"]),
    ],
)
def test_bad_names_are_one_line(hub, ref, needles):
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(ref)
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_offline_without_cache_says_how_to_get_it(hub, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(REPO)
    message = str(error.value)
    assert "\n" not in message and "not in the local cache" in message and "--model DIR" in message


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_broken_download_leaves_nothing_in_the_way(hub, fault):
    hub.faults["pytorch_model.bin"] = fault
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(REPO)
    message = str(error.value)
    assert "\n" not in message and REPO in message and "try again" in message
    hub.faults.clear()
    expected = logits(parcae.from_pretrained(OFFICIAL_FIXTURE))
    assert torch.equal(logits(parcae.from_pretrained(REPO)), expected)


def test_cli_takes_a_hub_name(hub, capsys):
    assert main(["generate", "--model", f"{REPO}@main", "--prompt-ids", "1,2,3",
                 "--max-new-tokens", "4", "--temperature", "0"]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.split()) >= 3
    assert main(["generate", "--model", "org/missing", "--prompt-ids", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "org/missing" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "{ref}", "--prompt-ids", "1"],
        ["chat", "--model", "{ref}"],
        ["eval", "--model", "{ref}"],
        ["serve", "--model", "{ref}"],
        ["quantize", "--model", "{ref}", "--scheme", "int8", "{tmp}/q"],
        ["export", "onnx", "--model", "{ref}", "{tmp}/m.onnx"],
        ["convert", "official", "{ref}", "{tmp}/c"],
        ["flops", "{ref}"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_model_command_names_an_unknown_repo_in_one_line(hub, tmp_path, capsys, argv):
    argv = [arg.format(ref="org/missing", tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "org/missing" in err and "Hub" in err, err
    assert not (tmp_path / "q").exists() and not (tmp_path / "c").exists()


def test_flops_fetches_the_config_only_and_convert_takes_a_name(hub, tmp_path, capsys):
    assert main(["flops", REPO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_len"] == 64
    assert hub.downloads == ["config.json"]
    assert main(["convert", "official", REPO, str(tmp_path / "converted")]) == 0
    converted = parcae.from_pretrained(tmp_path / "converted")
    assert torch.equal(logits(converted), logits(parcae.from_pretrained(OFFICIAL_FIXTURE)))


def test_unreachable_hub_without_cache_says_how_to_get_it(hub, monkeypatch):
    unreachable = "http://127.0.0.1:9"  # the discard port: connection refused
    monkeypatch.setattr(constants, "ENDPOINT", unreachable)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        unreachable + "/{repo_id}/resolve/{revision}/{filename}",
    )
    with pytest.raises(CheckpointError) as error:
        parcae.from_pretrained(REPO)
    message = str(error.value)
    assert "\n" not in message and "cannot be reached" in message and "--model DIR" in message
