"""ONNX export (`parcae export onnx`) and onnxruntime generation (`parcae generate --backend
onnxruntime`): logits within 1e-4 of PyTorch's for prefill and decode steps, greedy (and
seeded) tokens equal to `parcae.generate`, and bad input refused in one line."""

import numpy as np
import pytest
import torch

import parcae
from parcae.cli import main
from parcae.infer.sampling import SamplingParams
from tests.bad_input import refuse
from tests.infer.conftest import tiny_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from parcae.export.onnx import export_onnx  # noqa: E402
from parcae.export.runtime import OnnxGenerator  # noqa: E402

T = 2
PROMPT = [5, 17, 42, 7, 99, 3, 250, 11, 64, 8]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{kind: (model, saved model directory, exported file)} for a tiny Parcae at T=2 and a
    tiny GPT (vocabulary 300, context 64)."""
    root = tmp_path_factory.mktemp("onnx")
    found = {}
    for kind, preset in (("parcae", "parcae-tiny"), ("gpt", "gpt-tiny")):
        model = tiny_model(preset)
        directory = root / kind
        model.save_pretrained(directory)
        found[kind] = (model, directory, export_onnx(model, root / f"{kind}.onnx", T))
    return found


@pytest.mark.parametrize("kind", ["parcae", "gpt"])
def test_logits_match_pytorch(exports, kind):
    model, _, path = exports[kind]
    runtime = OnnxGenerator(path, model.config, T)
    vocab = model.config.vocab_size
    cache = model.new_cache(1, model.config.context_length, T)
    with torch.no_grad():
        expected = model(torch.tensor([PROMPT]), cache=cache).logits[..., :vocab]
    keys, values = runtime.empty_cache()
    logits, keys, values = runtime.run(PROMPT, 0, keys, values)
    assert logits.shape == (1, len(PROMPT), vocab)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
    position = len(PROMPT)
    for _ in range(4):
        token = int(expected[0, -1].argmax())
        assert token == int(logits[0, -1].argmax())
        with torch.no_grad():
            expected = model(torch.tensor([[token]]), cache=cache).logits[..., :vocab]
        logits, keys, values = runtime.run([token], position, keys, values)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
        position += 1
    np.testing.assert_allclose(keys[..., :position, :], cache.keys[..., :position, :], atol=1e-4)


@pytest.mark.parametrize("kind", ["parcae", "gpt"])
def test_greedy_tokens_equal_generate(exports, kind):
    model, _, path = exports[kind]
    expected = parcae.generate(model, PROMPT, 30, num_steps=T, temperature=0)[0].tolist()
    params = SamplingParams(max_new_tokens=30, temperature=0)
    assert OnnxGenerator(path, model.config).generate(PROMPT, params) == expected


def test_seeded_sampling_equals_generate(exports):
    model, _, path = exports["parcae"]
    params = SamplingParams(max_new_tokens=20, temperature=0.8, top_k=50, min_p=0.05, seed=3)
    expected = parcae.generate(model, PROMPT, sampling=params.replace(num_steps=T))[0].tolist()
    assert OnnxGenerator(path, model.config).generate(PROMPT, params) == expected


def test_cli_export_and_generate(exports, tmp_path, capsys):
    _, directory, _ = exports["parcae"]
    out = tmp_path / "cli.onnx"
    assert main(["export", "onnx", "--model", str(directory), "--num-steps", "2", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    common = ["--model", str(directory), "--prompt-ids", "1,2,3", "--temperature", "0"]
    common += ["--max-new-tokens", "12", "--num-steps", "2"]
    assert main(["generate", *common]) == 0
    torch_text = capsys.readouterr().out
    assert main(["generate", "--backend", "onnxruntime", "--onnx", str(out), *common]) == 0
    assert capsys.readouterr().out == torch_text


@pytest.fixture
def not_parcae(tmp_path):
    """A valid ONNX model that is not a parcae export (y = x)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def _generate(exports, kind, onnx, *extra):
    _, directory, _ = exports[kind]
    return ["generate", "--backend", "onnxruntime", "--onnx", str(onnx), "--model",
            str(directory), "--prompt-ids", "1,2", *extra]  # fmt: skip


def test_generate_refuses_a_file_that_is_not_the_expected_graph(exports, not_parcae, capsys):
    parcae_file, gpt_file = exports["parcae"][2], exports["gpt"][2]
    protect = [parcae_file, gpt_file, not_parcae]
    line = refuse(_generate(exports, "parcae", not_parcae), capsys, protect)
    assert "not a parcae export" in line
    line = refuse(_generate(exports, "parcae", parcae_file, "--num-steps", "3"), capsys, protect)
    assert "T=2" in line and "--num-steps 3" in line
    assert "without a loop" in refuse(_generate(exports, "parcae", gpt_file), capsys, protect)
    assert "not a parcae export" in refuse(_generate(exports, "gpt", parcae_file), capsys, protect)
    garbage = not_parcae.with_name("garbage.onnx")
    garbage.write_text("not onnx")
    assert "not a loadable ONNX" in refuse(_generate(exports, "parcae", garbage), capsys, protect)
    missing = not_parcae.with_name("missing.onnx")
    assert "no such ONNX file" in refuse(_generate(exports, "parcae", missing), capsys, protect)
    line = refuse(_generate(exports, "parcae", parcae_file, "--adaptive", "0.1"), capsys)
    assert "--adaptive" in line
    argv = _generate(exports, "parcae", parcae_file)
    line = refuse([a for a in argv if a not in ("--backend", "onnxruntime")], capsys, protect)
    assert "--onnx" in line


def test_export_refuses_bad_input(exports, tmp_path, capsys):
    _, directory, _ = exports["parcae"]
    protect = [directory, tmp_path]

    def export(*argv):
        return refuse(["export", "onnx", "--model", str(directory), *argv], capsys, protect)

    assert "full" in export("--cache-sharing", "shared", str(tmp_path / "a.onnx"))
    assert "full" in export("--cache-sharing", "ring:2", str(tmp_path / "a.onnx"))
    assert "--num-steps" in export("--num-steps", "0", str(tmp_path / "a.onnx"))
    assert "--num-steps" in export("--num-steps", "5000", str(tmp_path / "a.onnx"))
    afile = tmp_path / "file"
    afile.write_text("x")
    protect.append(afile)
    assert "is a file" in export(str(afile / "out.onnx"))
    assert "directory" in export(str(tmp_path))
    assert ".onnx" in export(str(tmp_path / "out.txt"))
    line = refuse(
        ["export", "onnx", "--model", str(tmp_path / "nope"), str(tmp_path / "a.onnx")],
        capsys,
        protect,
    )
    assert "no such model" in line
    assert not (tmp_path / "a.onnx").exists()


def test_generate_refuses_a_graph_of_another_vocabulary(exports, tmp_path, capsys):
    """A graph exported from a model with a smaller vocabulary than the --model given: prompt
    ids beyond the graph's vocabulary would crash onnxruntime's Gather; refused first."""
    small = tiny_model("parcae-tiny", vocab_size=64)
    graph = export_onnx(small, tmp_path / "small.onnx", T)
    _, directory, _ = exports["parcae"]
    argv = ["generate", "--backend", "onnxruntime", "--onnx", str(graph), "--model",
            str(directory), "--prompt-ids", "1,250"]  # fmt: skip
    line = refuse(argv, capsys, protect=[graph, directory])
    assert "exported with vocab_size 64" in line and "300" in line


def test_export_never_writes_through_a_planted_link(exports, tmp_path):
    """The temporary used to be `.NAME.onnx.tmp`, opened through a symlink planted there."""
    model, _, _ = exports["gpt"]
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".out.onnx.tmp").symlink_to(victim)
    export_onnx(model, tmp_path / "out.onnx", T)
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.onnx").stat().st_size > 0
