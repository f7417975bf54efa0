"""`parcae quantize`: weight-only int8 / int4 (torchao) on a trained tiny Parcae, saved, loaded
back with `from_pretrained`, generating, evaluated by `parcae eval`, smaller on disk; and the
bad inputs it refuses in one line."""

from __future__ import annotations

import json

import pytest
import torch

import parcae
from parcae.cli import main
from tests.bad_input import refuse

# measured on the 40-step model below (group size 32): |Δbpb| at T = 1 and T = 4, int8 0.0003
# and 0.0003, int4 0.0035 and 0.0031; the tolerances leave about 10x margin
BPB_TOLERANCE = {"int8": 0.005, "int4": 0.03}
# max |Δlogit| relative to the fp32 logits' max |logit|
LOGIT_TOLERANCE = {"int8": 0.02, "int4": 0.2}
# quantized matrices' bytes on disk / their fp32 bytes
SIZE_LIMIT = {"int8": 0.35, "int4": 0.2}


@pytest.fixture(scope="module")
def quantized(trained_run, tmp_path_factory):
    """{scheme: model directory} quantized from the trained run by the CLI."""
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for scheme in ("int8", "int4"):
        assert (
            main(["quantize", "--model", str(trained_run), "--scheme", scheme, str(root / scheme)])
            == 0
        )
        out[scheme] = root / scheme
    return out


def _eval(model_path, data_dir, out, depths):
    argv = [
        "eval",
        "--model",
        str(model_path),
        "--tasks",
        "bpb",
        "--data",
        str(data_dir),
        "--depths",
        ",".join(map(str, depths)),
        "--bpb-batches",
        "4",
        "--batch-size",
        "8",
        "--seq-len",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    return json.loads(out.read_text())["bpb"]


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_round_trip_logits_close(scheme, trained_run, quantized):
    reference = parcae.from_pretrained(trained_run / "model")
    model = parcae.from_pretrained(quantized[scheme])
    config = json.loads((quantized[scheme] / "config.json").read_text())
    assert config["quantization"]["scheme"] == scheme
    assert model.quantization.scheme == scheme
    inputs = torch.randint(0, 400, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(inputs).logits, model(inputs).logits
    error = (got - expected).abs().max() / expected.abs().max()
    print(f"{scheme}: relative logit error {error:.4f}")
    assert error < LOGIT_TOLERANCE[scheme], f"{scheme}: relative logit error {error:.4f}"
    # saving the loaded model again writes the same tensors
    again = quantized[scheme].parent / f"{scheme}-again"
    model.save_pretrained(again)
    with torch.no_grad():
        assert torch.equal(parcae.from_pretrained(again)(inputs).logits, got)


def test_bpb_close_to_fp32_and_eval_works(trained_run, quantized, data_dir, tmp_path):
    depths = [1, parcae.from_pretrained(trained_run / "model").config.mean_recurrence]
    fp32 = _eval(trained_run, data_dir, tmp_path / "fp32.json", depths)
    for scheme, path in quantized.items():
        bpb = _eval(path, data_dir, tmp_path / f"{scheme}.json", depths)
        for depth in map(str, depths):
            gap = abs(bpb[depth] - fp32[depth])
            print(f"{scheme} T={depth}: bpb {bpb[depth]:.4f} vs fp32 {fp32[depth]:.4f}")
            assert gap < BPB_TOLERANCE[scheme], f"{scheme} T={depth}: Δbpb {gap:.4f}"


def test_generate(quantized, capsys):
    for path in quantized.values():
        capsys.readouterr()
        argv = [
            "generate",
            "--model",
            str(path),
            "--prompt",
            "To be, or not",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
        ]
        assert main(argv) == 0
        assert capsys.readouterr().out.strip()


def test_smaller_on_disk(trained_run, quantized):
    from safetensors import safe_open

    def matrix_bytes(path, keys):
        with safe_open(str(path / "model.safetensors"), "pt") as handle:
            return sum(
                handle.get_tensor(key).numel() * handle.get_tensor(key).element_size()
                for key in handle.keys()
                if key in keys or key.rsplit(".", 1)[0] in keys
            )

    for scheme, path in quantized.items():
        keys = set(json.loads((path / "config.json").read_text())["quantization"]["weights"])
        ratio = matrix_bytes(path, keys) / matrix_bytes(trained_run / "model", keys)
        assert ratio < SIZE_LIMIT[scheme], f"{scheme}: {ratio:.3f} of fp32"
        total = (path / "model.safetensors").stat().st_size
        assert total < (trained_run / "model" / "model.safetensors").stat().st_size * 0.5


def test_refusals(trained_run, quantized, tmp_path, capsys):
    model = str(trained_run)
    protect = [trained_run, quantized["int8"]]
    line = refuse(
        ["quantize", "--model", str(quantized["int8"]), "--scheme", "int4", str(tmp_path / "a")],
        capsys,
        protect,
    )
    assert "already quantized" in line
    line = refuse(
        ["quantize", "--model", model, "--scheme", "int3", str(tmp_path / "b")], capsys, protect
    )
    assert "int3" in line
    line = refuse(
        [
            "quantize",
            "--model",
            model,
            "--scheme",
            "int8",
            "--group-size",
            "48",
            str(tmp_path / "c"),
        ],
        capsys,
        protect,
    )
    assert "group size 48" in line
    (tmp_path / "file").write_text("x")
    line = refuse(
        ["quantize", "--model", model, "--scheme", "int8", str(tmp_path / "file")],
        capsys,
        [*protect, tmp_path / "file"],
    )
    assert "file" in line
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    line = refuse(
        ["quantize", "--model", model, "--scheme", "int8", str(tmp_path / "full")],
        capsys,
        [*protect, tmp_path / "full"],
    )
    assert "not empty" in line
    line = refuse(
        ["quantize", "--model", str(tmp_path / "missing"), "--scheme", "int8", str(tmp_path / "d")],
        capsys,
        protect,
    )
    assert "missing" in line
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_missing_torchao_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    import sys

    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)
    line = refuse(
        ["quantize", "--model", str(trained_run), "--scheme", "int8", str(tmp_path / "out")],
        capsys,
        [trained_run],
    )
    assert "torchao" in line and "parcae[quant]" in line


def test_import_parcae_registers_the_quantized_format():
    from parcae.model.serialization import quantized_format
    from parcae.quant.schemes import load_quantized, quantized_state

    registered = quantized_format("a model")
    assert (registered.save, registered.load) == (quantized_state, load_quantized)
