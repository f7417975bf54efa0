"""Fine-tuning (`init_from`): a base model trained on Shakespeare, fine-tuned on a corpus it
never saw (counting sentences): the validation loss falls, the run resumes exactly after kill -9,
and the model it saves loads like any other; bad cases are one line with their inputs untouched."""

from __future__ import annotations

import json
import random

import pytest
import torch

from parcae.data.loader import iter_eval_batches
from parcae.data.prepare import prepare_dataset
from parcae.data.tokenizer import Tokenizer
from parcae.eval.loss import evaluate
from parcae.model import from_pretrained
from parcae.train.config import FINETUNE_DEFAULTS, load_config
from parcae.train.loop import train
from tests.bad_input import refuse

from .conftest import tiny_config
from .test_bad_input import tiny_run
from .test_fault_drill import _kill, _records


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory):
    """A 64-wide Parcae trained for 6 steps on the plays: its run's model directory."""
    run = tmp_path_factory.mktemp("base")
    train(tiny_config(data_dir, run))
    return run / "model"


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    """A corpus of 300 sentences about sums, one JSONL document each: nothing like the plays."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("counting") / "counting.jsonl"
    lines = []
    for _ in range(300):
        a, b = rng.randrange(10), rng.randrange(10)
        lines.append(json.dumps({"text": f"{a} plus {b} makes {a + b}. " * 3}))
    path.write_text("\n".join(lines) + "\n")
    return path


def finetune_config(base, counting, out_dir, **overrides):
    """A short fine-tuning run of `base` on `counting`, prepared into OUT_DIR-data."""
    config = tiny_config(
        out_dir.parent / f"{out_dir.name}-data",
        out_dir,
        **{
            "init_from": str(base),
            "lr": 0.01,
            "adam_lr": 0.005,
            "weight_decay": 0.0,
            "model_overrides": {},
            **overrides,
        },
    )
    config.data_dir, config.data = config.data, str(counting)
    return config


def test_finetuning_lowers_the_validation_loss_on_an_unseen_corpus(base, counting, tmp_path):
    result = train(finetune_config(base, counting, tmp_path / "run", max_steps=12))
    data_dir = tmp_path / "run-data"
    assert Tokenizer.load(data_dir).hash == Tokenizer.load(base).hash  # the model's tokenizer
    before = evaluate(
        from_pretrained(base),
        iter_eval_batches(data_dir, "val", 8, 32, 2),
        torch.from_numpy(Tokenizer.load(base).token_byte_lengths()),
        [None],
    )[0]
    after = result.final_eval[-1]
    assert after.tokens == before.tokens > 0
    assert after.loss < 0.8 * before.loss, (before.loss, after.loss)
    tuned = from_pretrained(tmp_path / "run" / "model")  # saves and loads like any run
    assert tuned.config == from_pretrained(base).config


def test_finetuning_starts_from_the_models_weights(base, counting, tmp_path):
    """With a zero learning rate the fine-tuned model is the base model."""
    train(finetune_config(base, counting, tmp_path / "run", max_steps=1, lr=1e-12, adam_lr=1e-12))
    tuned, original = from_pretrained(tmp_path / "run" / "model"), from_pretrained(base)
    for (name, a), b in zip(tuned.state_dict().items(), original.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def test_an_override_that_keeps_the_shapes_is_allowed(base, counting, tmp_path):
    config = finetune_config(
        base, counting, tmp_path / "run", max_steps=1, model_overrides={"mean_recurrence": 2}
    )
    train(config)
    assert from_pretrained(tmp_path / "run" / "model").config.mean_recurrence == 2


def test_finetuning_resumes_exactly_after_kill_9(base, counting, tmp_path):
    steps = 6
    reference = tmp_path / "reference"
    train(finetune_config(base, counting, reference, max_steps=steps))
    run, config = tmp_path / "run", tmp_path / "run.yaml"
    finetune_config(base, counting, run, max_steps=steps, resume=True).save(config)
    _kill(config, "step", 3)
    train(load_config(config))
    assert _records(run) == _records(reference)


def test_load_config_applies_the_finetuning_defaults_unless_given(base):
    config = load_config(None, [f"init_from={base}", "lr=0.005"])
    assert (config.lr, config.adam_lr, config.max_steps) == (
        0.005,
        FINETUNE_DEFAULTS["adam_lr"],
        FINETUNE_DEFAULTS["max_steps"],
    )
    assert load_config(None, [f"init_from={base}", "max_tokens=1000"]).max_steps is None
    assert load_config(None, []).lr != FINETUNE_DEFAULTS["lr"]


def _finetune_argv(base, data, out_dir, *overrides):
    argv = [item for item in tiny_run(data, out_dir) if not item.startswith("model_overrides")]
    return [*argv, f"init_from={base}", *overrides]


def test_an_override_that_changes_a_shape_is_refused_by_name(base, counting, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _finetune_argv(base, counting, out, "model_overrides.d_model=32")
    line = refuse(argv, capsys, protect=[base, counting])
    assert "model_overrides.d_model" in line and "shape" in line
    assert not out.exists()


def test_data_prepared_with_another_tokenizer_is_refused(base, plays_dir, tmp_path, capsys):
    other = tmp_path / "other"
    Tokenizer.train([p.read_text() for p in sorted(plays_dir.iterdir())], 300).save(other)
    prepare_dataset(str(plays_dir), other, other, val_fraction=0.05, progress=False)
    line = refuse(_finetune_argv(base, other, tmp_path / "run"), capsys, protect=[base, other])
    assert "tokenizer" in line and Tokenizer.load(other).hash in line


def test_a_missing_model_is_refused(counting, tmp_path, capsys):
    line = refuse(_finetune_argv(tmp_path / "nowhere", counting, tmp_path / "run"), capsys)
    assert "nowhere" in line


def test_chat_tuning_without_a_model_is_refused(data_dir, tmp_path, capsys):
    line = refuse([*tiny_run(data_dir, tmp_path / "run"), "data=sft:chats.jsonl"], capsys)
    assert "init_from" in line
