import subprocess
import sys
from pathlib import Path

import pytest

from parcae.errors import ConfigError
from parcae.model import create_model
from parcae.train.config import DEFAULT_MAX_STEPS, load_config

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_embedded_run():
    config = load_config()
    assert config.model == "parcae-tiny" and config.data == "shakespeare"
    assert config.max_steps == DEFAULT_MAX_STEPS


def test_dotted_overrides_parse_yaml_values():
    config = load_config(
        None,
        [
            "lr=1e-3",
            "model_overrides.d_model=64",
            "eval_depths=[1, 3]",
            "resume=true",
            "model=gpt-tiny",
        ],
    )
    assert config.lr == 1e-3 and config.model_overrides == {"d_model": 64}
    assert config.eval_depths == [1, 3] and config.resume is True and config.model == "gpt-tiny"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: rdm-tiny\nbatch_size: 8\nmodel_overrides:\n  d_model: 96\n")
    config = load_config(path, ["batch_size=16", "model_overrides.n_heads=2"])
    assert config.model == "rdm-tiny" and config.batch_size == 16
    assert config.model_overrides == {"d_model": 96, "n_heads": 2}


def test_a_budget_other_than_steps_replaces_the_default_steps():
    assert load_config(None, ["max_tokens=1000000"]).max_steps is None


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    config = load_config(path)
    model = create_model(config.model, device="meta", **config.model_overrides)
    assert model.num_params() > 0 and config.out_dir.startswith("runs/")


def test_unknown_key_suggests_the_closest_names():
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        load_config(None, ["bach_size=4"])


def test_unknown_key_in_yaml_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown training config key 'learning_rate'"):
        load_config(path)


@pytest.mark.parametrize(
    "override, field",
    [
        ("batch_size=0", "batch_size"),
        ("lr=-1", "lr"),
        ("optimizer=sgd", "optimizer"),
        ("precision=fp8", "precision"),
        ("decay_fraction=2", "decay_fraction"),
        ("batch_size=6", "micro_batch_size"),
    ],
)
def test_bad_values_are_refused_naming_the_field(override, field):
    overrides = [override] + (["micro_batch_size=4"] if field == "micro_batch_size" else [])
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_config(None, overrides)


def test_cli_prints_one_line_and_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "parcae", "train", "max_step=3"], capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "parcae: error: unknown training config key 'max_step'; did you mean max_steps"
    )
