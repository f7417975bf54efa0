"""The BIG-bench samples in tests/fixtures/ keep BIG-bench's task format (tests/eval converts
them; the other fixtures are read by the tests that need them)."""

import json

import pytest

from tests.conftest import BIGBENCH_DIR

TASKS = (
    "cs_algorithms/lcs",
    "cs_algorithms/valid_parentheses",
    "dyck_languages",
    "language_identification",
    "operators",
    "qa_wikidata",
    "repeat_copy_logic",
)


@pytest.mark.parametrize("task", TASKS)
def test_bigbench_sample_is_a_task_with_twenty_examples(task):
    data = json.loads((BIGBENCH_DIR / task / "task.json").read_text())
    assert data["name"] == task.split("/")[-1] and "canary" in data
    assert len(data["examples"]) == 20
    for example in data["examples"]:
        assert isinstance(example["input"], str)
        assert "target" in example or "target_scores" in example
