"""`parcae serve` refuses bad options in one line before it loads a model or listens (the
contract of `tests/bad_input.py`); the HTTP API's bad requests are `test_server.py`'s,
`test_guard.py`'s and `test_fuzz.py`'s."""

from __future__ import annotations

import pytest

from tests.bad_input import refuse

CASES = {
    "read timeout zero": (["--read-timeout", "0"], "--read-timeout must be in (0, 86400]"),
    "read timeout nan": (["--read-timeout", "nan"], "--read-timeout"),
    "read timeout inf": (["--read-timeout", "inf"], "--read-timeout"),
    "request timeout negative": (["--request-timeout", "-1"], "--request-timeout"),
    "request timeout of a year": (["--request-timeout", "31536000"], "--request-timeout"),
    "no connections": (["--max-connections", "0"], "--max-connections must be in [1, 65536]"),
    "a billion connections": (["--max-connections", "1000000000"], "--max-connections"),
    "connections not a number": (["--max-connections", "many"], "invalid int"),
    "api key with a control character": (["--api-key", "abc\x07"], "--api-key"),
    "max batch zero": (["--max-batch", "0"], "--max-batch"),
    "num steps beyond the limit": (
        ["--num-steps", "147896"],
        "--num-steps must be an integer in [1, 1024]",
    ),
}


@pytest.mark.parametrize("argv, message", CASES.values(), ids=CASES.keys())
def test_serve_refuses_a_bad_option_before_loading(argv, message, tmp_path, capsys):
    missing = tmp_path / "no-model"  # never read: the options are refused first
    assert message in refuse(["serve", "--model", str(missing), "--port", "0", *argv], capsys)


def test_serve_refuses_an_empty_key_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PARCAE_API_KEY", "\t")
    argv = ["serve", "--model", str(tmp_path / "m"), "--port", "0"]
    assert "--api-key" in refuse(argv, capsys)
