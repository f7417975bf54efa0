"""Fuzzing the HTTP API (Hypothesis, fixed seed, bounded examples): whatever the body, the answer
is a 2xx or a 4xx in OpenAI's error shape, never a 500, a traceback or a hang."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.test_server import metrics

FUZZ = settings(
    max_examples=30,
    derandomize=True,  # a fixed seed: the same examples on every run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FIELDS = (
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "num_steps",
    "adaptive_eps",
    "stop",
    "stream",
    "stream_options",
    "n",
)
ALLOWED = {200, 400, 404, 413, 422}

# text with lone surrogates, controls and astral characters (json.dumps escapes them as \u....)
texts = st.text(st.characters(categories=["L", "N", "P", "Z", "Cc", "Cs", "So"]), max_size=24)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 2, 1e-39, 5e-324, 1e-6, 0.5, 1.0, 1e308, -0.0, 2**64, 1024, 1025]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=3),
    max_leaves=10,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant"]) | texts,
            "content": texts | values,
        }
    ),
    max_size=3,
)
prompts = texts | st.lists(st.integers(-5, 400), max_size=6) | values
SPECIAL = {"prompt": prompts, "messages": messages | values}
bodies = st.fixed_dictionaries(
    {}, optional={name: SPECIAL.get(name, numbers | values) for name in FIELDS}
)


def bounded(body: dict) -> dict:
    """A body whose generation, if valid, is short (the fuzz is about the checks)."""
    body = dict(body)
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] > 4:
        body.setdefault("max_tokens", 2)
    return body


def check_answer(response: httpx.Response) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300])
    assert "server_error" not in response.text, response.text[:300]
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "Traceback" not in error["message"]


@FUZZ
@given(body=bodies, chat=st.booleans())
def test_any_json_body_gets_a_2xx_or_a_4xx(server, body, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body.pop("prompt" if chat else "messages", None)
    raw = json.dumps(bounded(body)).encode()
    response = httpx.post(
        f"{server.url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=60
    )
    check_answer(response)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_bytes_get_a_4xx(server, raw):
    for path in ("/v1/completions", "/v1/chat/completions"):
        response = httpx.post(f"{server.url}{path}", content=raw, timeout=60)
        check_answer(response)
        assert response.status_code != 200


def test_no_500_was_counted(server):
    """After the fuzz (and every other request of the session), no response was a 500."""
    assert metrics(server).get('parcae_http_responses_total{status="500"}', 0) == 0
