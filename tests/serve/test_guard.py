"""The server against clients it cannot trust (`parcae.serve.guard`): half-sent requests are
closed after the read timeout while /health answers, connections beyond the cap are refused, a
poisoned request fails alone, disconnects are one log line and counted apart from errors, the
API key, CORS and the per-request time limit."""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from parcae.cli import build_parser
from parcae.serve.guard import ServerLimits
from tests.serve.conftest import start_server
from tests.serve.test_server import metrics, wait_for

HALF_SENT = [
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",  # headers never end
    b"GET /health HTTP/1.1\r\nHo",  # a header cut in the middle
    b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"prompt":',
    b"",  # connected, silent
]


def raw_connection(server, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if payload:
        sock.sendall(payload)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closes the connection (EOF), read with the socket's timeout."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


@pytest.fixture(scope="module")
def guarded(serve_model_dir):
    """A server with a short read timeout and a cap of 12 connections."""
    limits = ServerLimits(read_timeout=1.0, max_connections=12)
    running = start_server(serve_model_dir, max_batch=4, limits=limits)
    yield running
    running.stop()


def test_half_sent_requests_are_closed_after_the_read_timeout(guarded):
    before = metrics(guarded)["parcae_read_timeouts_total"]
    sockets = [raw_connection(guarded, payload) for payload in HALF_SENT * 2]
    try:
        health = httpx.get(f"{guarded.url}/health", timeout=10)  # answered meanwhile
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert all(closed_by_server(sock) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    after = wait_for(lambda: (m := metrics(guarded))["parcae_read_timeouts_total"] and m)
    assert after["parcae_read_timeouts_total"] - before == len(sockets)
    assert after.get('parcae_http_responses_total{status="500"}', 0) == 0


def test_connections_beyond_the_cap_are_closed_on_arrival(guarded):
    sockets = [raw_connection(guarded, b"") for _ in range(12 + 3)]
    try:
        refused = [sock for sock in sockets[12:] if closed_by_server(sock)]
        assert len(refused) == 3
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: httpx.get(f"{guarded.url}/health").status_code == 200)
    assert metrics(guarded)["parcae_connections_refused_total"] >= 3


POISONED = [
    {"prompt": "To be", "max_tokens": 3, "temperature": 1e-39},
    {"prompt": "To be \ud800", "max_tokens": 3},
    {"messages": [{"role": "user\udfff", "content": "hi"}], "max_tokens": 3},
    {"prompt": "To be", "max_tokens": 3, "temperature": 5e-324},
]


@pytest.mark.parametrize("poison", POISONED, ids=["tiny-t", "surrogate", "role", "subnormal-t"])
def test_a_poisoned_request_fails_alone(server, poison):
    """Normal requests around a poisoned one all succeed; the poisoned one gets a 400."""
    normal = {"prompt": "To be, or not", "max_tokens": 6, "temperature": 0.9, "seed": 1}
    path = "/v1/chat/completions" if "messages" in poison else "/v1/completions"
    body = json_text(poison)

    def send(index: int) -> httpx.Response:
        if index == 3:
            return httpx.post(
                f"{server.url}{path}",
                content=body,
                headers={"content-type": "application/json"},
                timeout=60,
            )
        return httpx.post(f"{server.url}/v1/completions", json=normal, timeout=60)

    with ThreadPoolExecutor(7) as pool:
        responses = list(pool.map(send, range(7)))
    bad = responses[3]
    assert bad.status_code == 400, bad.text
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    texts = {r.json()["choices"][0]["text"] for i, r in enumerate(responses) if i != 3}
    assert all(r.status_code == 200 for i, r in enumerate(responses) if i != 3)
    assert len(texts) == 1  # one seed, one answer, whatever shared the batch


def json_text(body: dict) -> bytes:
    """The body as JSON with \\u escapes (how a client sends a lone surrogate)."""
    import json

    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "raw",
    [b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["array", "object"],
)
def test_a_deeply_nested_body_is_a_400(server, raw):
    response = httpx.post(
        f"{server.url}/v1/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_a_disconnect_mid_body_is_one_line_and_no_error(guarded, caplog):
    before = metrics(guarded)
    with caplog.at_level(logging.INFO, logger="parcae.serve"):
        sock = raw_connection(
            guarded,
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n" + b'{"prompt": "' + b"a" * 100,
        )
        sock.close()
        after = wait_for(
            lambda: (
                (m := metrics(guarded))["parcae_disconnects_total"]
                > before["parcae_disconnects_total"]
                and m
            )
        )
    assert after.get('parcae_http_responses_total{status="500"}', 0) == before.get(
        'parcae_http_responses_total{status="500"}', 0
    )
    records = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is None
    assert all(r.exc_info is None for r in caplog.records)


# ----------------------------------------------------------------- a server you can expose


@pytest.fixture(scope="module")
def keyed(serve_model_dir):
    limits = ServerLimits(api_key="s3cret", allowed_origins=("https://chat.example",))
    running = start_server(serve_model_dir, max_batch=2, limits=limits)
    yield running
    running.stop()


@pytest.mark.parametrize("header", [None, "Bearer wrong", "s3cret", "bearer s3cre"])
@pytest.mark.parametrize("path", ["/v1/models", "/metrics"])
def test_without_the_key_a_401_in_openai_shape(keyed, header, path):
    headers = {} if header is None else {"Authorization": header}
    response = httpx.get(f"{keyed.url}{path}", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"


def test_with_the_key_the_api_answers(keyed):
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="s3cret", max_retries=0)
    response = client.completions.create(model=keyed.state.name, prompt="To be", max_tokens=2)
    assert response.usage.completion_tokens <= 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(f"{keyed.url}/health").status_code == 200  # open, as is the page
    page = httpx.get(f"{keyed.url}/")
    assert page.status_code == 200 and 'id="api-key"' in page.text


def test_cors_only_for_the_allowed_origins(server, keyed):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(
        f"{keyed.url}/v1/chat/completions",
        headers={"Origin": "https://chat.example", **preflight},
    )
    assert allowed.headers.get("access-control-allow-origin") == "https://chat.example"
    other = httpx.options(
        f"{keyed.url}/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers
    default = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://chat.example"})
    assert "access-control-allow-origin" not in default.headers  # CORS off by default


def test_the_default_bind_is_loopback():
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1"
    assert args.api_key is None and args.allowed_origins is None


def test_a_request_past_the_time_limit_is_a_504(serve_model_dir):
    """The engine is held (its forward waits on an event), so the request cannot finish: the
    time limit ends it with a 504 and frees its row; the server serves again after."""
    running = start_server(serve_model_dir, max_batch=1, limits=ServerLimits(request_timeout=0.2))
    release = threading.Event()
    model = running.state.batcher.model
    forward = model.forward

    def held(*args, **kwargs):
        release.wait(30)
        return forward(*args, **kwargs)

    model.forward = held
    try:
        response = httpx.post(
            f"{running.url}/v1/completions", json={"prompt": "To be", "max_tokens": 4}, timeout=60
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        release.set()
        model.forward = forward
        after = wait_for(lambda: (m := metrics(running))["parcae_active_batch_size"] == 0 and m)
        assert after["parcae_request_timeouts_total"] == 1
    finally:
        release.set()
        model.forward = forward
        running.stop()


def test_tokenising_a_prompt_never_stalls_other_clients(guarded):
    """Tokenising runs in a worker thread: while one prompt's encoding is held, /health
    answers (before, the event loop itself ran the encoding and every client waited)."""
    tokenizer = guarded.state.tokenizer
    encode, started, release = tokenizer.encode, threading.Event(), threading.Event()

    def held(text):
        started.set()
        release.wait(30)
        return encode(text)

    tokenizer.encode = held
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"{guarded.url}/v1/completions",
                json={"prompt": "To be " * 1000, "max_tokens": 1},
                timeout=60,
            )
            assert started.wait(30)
            assert httpx.get(f"{guarded.url}/health", timeout=10).status_code == 200
            release.set()
            assert pending.result().status_code == 400  # longer than the context
    finally:
        release.set()
        del tokenizer.encode
