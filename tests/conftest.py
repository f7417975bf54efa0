"""What every test package shares: the paths of the committed fixtures (tests/fixtures/, see its
README for origin and licence), the Shakespeare plays as a fixture, and the rule that a test may
be skipped only for missing hardware.

Test modules import the paths from here (`from tests.conftest import OFFICIAL_FIXTURE`), so that
a fresh clone needs nothing beside the repository and a missing file fails instead of skipping.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_FIXTURE = FIXTURES / "official" / "parcae-a"
# the released models' tokenizer layout: tokenizer.json + tokenizer_config.json (vocabulary 512)
OFFICIAL_TOKENIZER = FIXTURES / "official" / "tokenizer"
SHAKESPEARE_DIR = FIXTURES / "shakespeare"
BIGBENCH_DIR = FIXTURES / "bigbench"
HARNESS_DIR = FIXTURES / "harness"  # lm-eval task YAMLs and their jsonl (tests/eval)

# A skip is allowed only when its reason names missing hardware with one of these phrases (e.g.
# `reason="torch.compile on CPU needs a C++ compiler"`); any other skip is reported as a failure,
# so that a missing fixture or package cannot pass CI silently. A web browser counts as a
# machine-level tool like a compiler: the chat page's test (tests/serve/test_page.py) needs
# Debian's chromium and chromium-driver, which `.ci/run` installs where it can.
HARDWARE_SKIPS = (
    "needs a GPU",
    "needs a C++ compiler",
    "needs a Chromium browser",
    "needs glibc",
)


@pytest.fixture(scope="session")
def plays_dir() -> Path:
    """Six plays and poems, about 330 kB; two of them fall in val. Read-only for tests."""
    return SHAKESPEARE_DIR


def _fail_unless_hardware(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skipped report into a failed one unless its reason names missing hardware."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(phrase in reason for phrase in HARDWARE_SKIPS):
        report.outcome = "failed"
        allowed = " or ".join(repr(phrase) for phrase in HARDWARE_SKIPS)
        report.longrepr = (
            f"{reason}\nOnly missing hardware may skip a test: the reason must "
            f"contain {allowed} (HARDWARE_SKIPS in tests/conftest.py)."
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Skips raised in setup (skipif marks, fixtures) and in the test body."""
    report = yield
    _fail_unless_hardware(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Skips at module level (`pytest.importorskip`, `pytest.skip(allow_module_level=True)`)."""
    report = yield
    _fail_unless_hardware(report)
    return report
