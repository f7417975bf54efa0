"""Accuracy on synthetic reasoning tasks by difficulty and depth (`parcae.eval.reasoning`), and
`parcae eval --tasks synth:...`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from parcae import create_model
from parcae.cli import main
from parcae.data import synth
from parcae.data.synth_tasks import ALPHABET
from parcae.eval.reasoning import reasoning_accuracy

SPEC = "synth:add?digits=1-3"
VOCAB = 3 + len(ALPHABET)


class Oracle(nn.Module):
    """A fixed-depth 'model' that reads the next input token (the teacher-forced row) and
    predicts it, EOS where the row's padding starts; `wrong_eos` predicts PAD there instead."""

    def __init__(self, wrong_eos: bool = False):
        super().__init__()
        self.config = SimpleNamespace(is_looped=False, default_depth=None)
        self.tok, self.wrong_eos = synth.tokenizer(), wrong_eos

    def forward(self, input_ids):
        pad = torch.full_like(input_ids[:, :1], self.tok.pad_id)
        following = torch.cat([input_ids[:, 1:], pad], dim=1)
        if not self.wrong_eos:
            following = torch.where(following == self.tok.pad_id, self.tok.eos_id, following)
        return SimpleNamespace(logits=nn.functional.one_hot(following, VOCAB).float())


def test_an_oracle_scores_one_and_a_wrong_stop_scores_zero():
    right = reasoning_accuracy(Oracle(), SPEC, [None], items=20, batch_size=8)
    wrong = reasoning_accuracy(Oracle(wrong_eos=True), SPEC, [None], items=20, batch_size=8)
    assert [r.accuracy for r in right] == [1.0, 1.0, 1.0]
    assert [r.accuracy for r in wrong] == [0.0, 0.0, 0.0]
    assert [r.task for r in right] == [f"{SPEC} digits={d}" for d in (1, 2, 3)]
    assert {r.n for r in right} == {20} and {r.depth for r in right} == {None}


def test_a_looped_model_is_scored_at_every_depth_as_separate_forwards_would_be():
    torch.manual_seed(0)
    model = create_model(
        "parcae-tiny", vocab_size=VOCAB, d_model=32, ffn_dim=64, n_heads=2, context_length=32
    )
    with torch.no_grad():  # away from the identity init, so that depth changes the output
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    results = reasoning_accuracy(model, SPEC, [1, 3], items=16, batch_size=5)
    assert [(r.task.split()[-1], r.depth) for r in results] == [
        (f"digits={d}", t) for d in (1, 2, 3) for t in (1, 3)
    ]
    tok, parsed = synth.tokenizer(), synth.parse_spec(SPEC)
    model.eval()
    for result in results:
        difficulty = int(result.task.split("=")[-1])
        batch = synth.encode(tok, synth.val_items(parsed, 16, difficulty))
        logits = model(batch.inputs, num_steps=result.depth).logits
        hits = (logits.argmax(-1) == batch.targets) | (batch.targets == synth.IGNORE)
        assert result.accuracy == pytest.approx(float(hits.all(dim=1).float().mean()))


@pytest.fixture
def gpt_dir(tmp_path, monkeypatch):
    """A saved tiny GPT with the synthetic tasks' tokenizer."""
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path / "cache"))
    model = create_model(
        "gpt-tiny", vocab_size=VOCAB, d_model=32, ffn_dim=64, n_heads=2, context_length=32
    )
    model.save_pretrained(tmp_path / "model")
    synth.tokenizer().save(tmp_path / "model")
    return tmp_path / "model"


def test_parcae_eval_reports_synthetic_accuracy_by_difficulty(gpt_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    arguments = ["--tasks", SPEC, "--max-per-task", "8", "--no-progress", "--out", str(out)]
    assert main(["eval", "--model", str(gpt_dir), *arguments]) == 0
    results = json.loads(out.read_text())
    assert [r["task"] for r in results["results"]] == [f"{SPEC} digits={d}" for d in (1, 2, 3)]
    assert {r["n"] for r in results["results"]} == {8}
    assert f"{SPEC} digits=3" in capsys.readouterr().out


def test_a_bad_synthetic_task_is_one_line_and_exit_2(gpt_dir, capsys):
    code = main(["eval", "--model", str(gpt_dir), "--tasks", "synth:phop?hops=12"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("must be an integer in [1, 9]")
