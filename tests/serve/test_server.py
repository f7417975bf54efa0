"""The OpenAI-compatible server end to end: the real server on 127.0.0.1 (a free port), driven
by the real `openai` client (and httpx for raw bodies); every greedy answer equals
`parcae.generate` on the same prompt ids at the same depth, decoded."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import parcae
from parcae.data.chat_template import PLAIN_STOP, render_plain
from tests.serve.conftest import CONTEXT, MAX_NUM_STEPS, start_server

PROMPT = "To be, or not to be, that is the question"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(server):
    return server.state.name


def reference(model, tokenizer, ids, max_tokens, stops=(), **options):
    """(text, completion_tokens, finish_reason) of `parcae.generate` alone on `ids`: EOS ends
    it (counted, not in the text), a stop sequence cuts the text."""
    eos = tokenizer.eos_id
    out = parcae.generate(model, [ids], max_tokens, eos_token_id=eos, **options)
    new = out[0, len(ids) :].tolist()
    reason = "length"
    if eos in new:
        new, reason = new[: new.index(eos) + 1], "stop"
    text = tokenizer.decode([t for t in new if t != eos])
    cuts = [text.find(stop) for stop in stops if stop in text]
    if cuts:
        return text[: min(cuts)], None, "stop"
    return text, len(new), reason


def text_ids(tokenizer, text):
    return [tokenizer.bos_id, *tokenizer.encode(text)]


def chat_ids(tokenizer, messages):
    return [tokenizer.bos_id, *tokenizer.encode(render_plain(messages))]


def metrics(server) -> dict[str, float]:
    """The samples of /metrics, parsed by prometheus_client (labels folded into the name)."""
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# ----------------------------------------------------------------- the OpenAI API


def test_models_and_health(server, client, model_id):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_id]
    card = models.data[0]
    assert card.context_length == CONTEXT and card.num_steps == 4
    assert card.max_num_steps == MAX_NUM_STEPS
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["model"] == model_id


def test_completion_equals_generate(client, model_id, reference_model, serve_tokenizer):
    """A greedy completion is `parcae.generate`'s continuation at the same depth, decoded."""
    for num_steps in (None, 2, 7):
        response = client.completions.create(
            model=model_id,
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            extra_body={} if num_steps is None else {"num_steps": num_steps},
        )
        ids = text_ids(serve_tokenizer, PROMPT)
        text, tokens, reason = reference(
            reference_model, serve_tokenizer, ids, 24, num_steps=num_steps, temperature=0
        )
        choice = response.choices[0]
        assert choice.text == text
        assert choice.finish_reason == reason
        assert response.usage.prompt_tokens == len(ids)
        assert response.usage.completion_tokens == tokens
        assert response.usage.total_tokens == len(ids) + tokens
        assert response.usage.loop_steps == (num_steps or 4)


def test_completion_of_token_ids(client, model_id, reference_model, serve_tokenizer):
    """A prompt of token ids is used as it is (no BOS added)."""
    ids = [5, 17, 42, 99, 7]
    response = client.completions.create(prompt=ids, max_tokens=12, temperature=0, model=model_id)
    text, tokens, _ = reference(reference_model, serve_tokenizer, ids, 12, temperature=0)
    assert response.choices[0].text == text
    assert response.usage.prompt_tokens == len(ids)


def test_streamed_chat(client, model_id, reference_model, serve_tokenizer):
    """A streamed chat: a role chunk, content chunks whose text is the greedy reply of the plain
    template's prompt, then a chunk with finish_reason and usage."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Whether 'tis nobler in the mind?"},
    ]
    stream = client.chat.completions.create(
        model=model_id,
        messages=messages,
        max_tokens=30,
        temperature=0,
        stream=True,
        extra_body={"num_steps": 3},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) >= 2  # streamed, not one block
    last = chunks[-1]
    ids = chat_ids(serve_tokenizer, messages)
    text, tokens, reason = reference(
        reference_model, serve_tokenizer, ids, 30, [PLAIN_STOP], num_steps=3, temperature=0
    )
    assert "".join(pieces) == text
    assert last.choices[0].finish_reason == reason
    assert last.usage.prompt_tokens == len(ids)
    assert last.usage.loop_steps == 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_not_streamed(client, model_id, reference_model, serve_tokenizer):
    messages = [{"role": "user", "content": "Speak."}]
    response = client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=20, temperature=0
    )
    ids = chat_ids(serve_tokenizer, messages)
    text, _, reason = reference(
        reference_model, serve_tokenizer, ids, 20, [PLAIN_STOP], temperature=0
    )
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == text
    assert response.choices[0].finish_reason == reason


def test_stop_sequence_cuts_the_text(server, client, model_id, reference_model, serve_tokenizer):
    """`stop` is matched on the decoded text: the text ends before it, finish_reason is stop,
    and the request's row is freed at once."""
    ids = text_ids(serve_tokenizer, PROMPT)
    full, _, _ = reference(reference_model, serve_tokenizer, ids, 40, temperature=0)
    stop = next(full[i : i + 2] for i in range(6, len(full) - 2) if full[i : i + 2].strip())
    for stream in (False, True):
        kwargs = dict(model=model_id, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop])
        if stream:
            chunks = list(client.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            choice = client.completions.create(**kwargs).choices[0]
            text, reason = choice.text, choice.finish_reason
        assert text == full[: full.index(stop)]
        assert reason == "stop"
    wait_for(lambda: metrics(server)["parcae_active_batch_size"] == 0)


def test_seeds_are_reproducible(client, model_id, reference_model, serve_tokenizer):
    """A seeded sampled completion is the same every time, whatever shares the batch, and
    equals `parcae.generate` with that seed; another seed gives another text."""

    def sampled(seed, stream=False):
        kwargs = dict(
            model=model_id, prompt=PROMPT, max_tokens=20, temperature=0.9, top_p=0.95, seed=seed
        )
        if stream:
            return "".join(
                c.choices[0].text for c in client.completions.create(stream=True, **kwargs)
            )
        return client.completions.create(**kwargs).choices[0].text

    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(sampled, [7, 7, 7, 8]))
    assert texts[0] == texts[1] == texts[2] == sampled(7, stream=True)
    assert texts[3] != texts[0]
    ids = text_ids(serve_tokenizer, PROMPT)
    text, _, _ = reference(
        reference_model, serve_tokenizer, ids, 20, temperature=0.9, top_p=0.95, seed=7
    )
    assert texts[0] == text


def test_twenty_concurrent_mixed_requests(server, model_id, reference_model, serve_tokenizer):
    """20 requests at once (prompts of 1 to 60 tokens, 1 to 40 new tokens, depths 1 to 8,
    completions and chats, streamed or not) on a batch of 4: each equals its own sequential
    greedy `parcae.generate`."""
    rng = random.Random(0)
    words = PROMPT.split()
    jobs = []
    for index in range(20):
        chat, stream = index % 3 == 0, index % 2 == 0
        max_tokens, num_steps = rng.randint(1, 40), rng.choice([None, 1, 2, 3, 6, 8])
        if chat:
            content = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            messages = [{"role": "user", "content": content}]
            ids, stops = chat_ids(serve_tokenizer, messages), [PLAIN_STOP]
            body = dict(messages=messages)
        elif index % 4 == 1:
            ids = [rng.randrange(3, 300) for _ in range(rng.randint(1, 60))]
            stops, body = [], dict(prompt=ids)
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 20)))
            ids, stops, body = text_ids(serve_tokenizer, text), [], dict(prompt=text)
        body.update(model=model_id, max_tokens=max_tokens, temperature=0, stream=stream)
        if num_steps is not None:
            body["num_steps"] = num_steps
        expected = reference(
            reference_model,
            serve_tokenizer,
            ids,
            max_tokens,
            stops,
            num_steps=num_steps,
            temperature=0,
        )
        jobs.append((chat, body, expected))

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)

    def run(job):
        chat, body, _ = job
        body = dict(body)
        extra = {"num_steps": body.pop("num_steps")} if "num_steps" in body else {}
        create = client.chat.completions.create if chat else client.completions.create
        response = create(**body, extra_body=extra)
        if not body["stream"]:
            choice = response.choices[0]
            text = choice.message.content if chat else choice.text
            return text, choice.finish_reason
        text, reason = "", None
        for chunk in response:
            if chunk.choices:
                choice = chunk.choices[0]
                text += (choice.delta.content or "") if chat else choice.text
                reason = choice.finish_reason or reason
        return text, reason

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(run, jobs))
    for (_, body, (text, _, reason)), (got, got_reason) in zip(jobs, results):
        assert got == text, body
        assert got_reason == reason, body


# ----------------------------------------------------------------- cancellation, queue


def _stream_body(**overrides):
    body = dict(
        messages=[{"role": "user", "content": "Go on."}],
        max_tokens=100,
        temperature=0,
        stream=True,
        num_steps=MAX_NUM_STEPS,  # slow: the request is still running when it is cancelled
    )
    return {**body, **overrides}


def _read_content_chunks(lines, count):
    seen = 0
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                seen += 1
                if seen == count:
                    return


def test_disconnect_mid_stream_frees_the_slot(server, client, model_id):
    before = metrics(server)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=_stream_body()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()  # held: closing the iterator would close the connection
        _read_content_chunks(lines, 3)
        assert metrics(server)["parcae_active_batch_size"] == 1
    # the client is gone: the request is cancelled and its row freed long before 100 tokens
    after = wait_for(
        lambda: (
            (m := metrics(server))["parcae_active_batch_size"] == 0
            and m["parcae_requests_cancelled_total"] > before["parcae_requests_cancelled_total"]
            and m
        )
    )
    generated = after["parcae_tokens_generated_total"] - before["parcae_tokens_generated_total"]
    assert generated < 100
    response = client.completions.create(model=model_id, prompt="Again", max_tokens=3)
    assert response.usage.completion_tokens <= 3


def test_disconnect_while_waiting_for_a_completion_cancels_it(server):
    before = metrics(server)
    body = _stream_body(stream=False)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.5)
    after = wait_for(
        lambda: (
            (m := metrics(server))["parcae_active_batch_size"] == 0
            and m["parcae_requests_cancelled_total"] > before["parcae_requests_cancelled_total"]
            and m
        )
    )
    assert after["parcae_tokens_generated_total"] - before["parcae_tokens_generated_total"] < 100


@pytest.mark.parametrize("engine", ["process", "thread"])
def test_full_queue_answers_429_with_retry_after(serve_model_dir, engine):
    """One row and a queue of one: a running stream holds the row, a second request waits, a
    third is refused with 429 and Retry-After; the server serves again once they end. Both
    engines (the thread one counts its queue, the process one the requests in flight)."""
    small = start_server(serve_model_dir, max_batch=1, max_queue=1, engine=engine)
    url = f"{small.url}/v1/chat/completions"
    try:
        with httpx.stream("POST", url, json=_stream_body()) as first:
            lines = first.iter_lines()  # held until the end of the block
            _read_content_chunks(lines, 1)
            with httpx.stream("POST", url, json=_stream_body()) as second:
                assert second.status_code == 200
                wait_for(lambda: small.state.batcher.stats()["queue_depth"] == 1)
                refused = httpx.post(url, json=_stream_body(stream=False))
                assert refused.status_code == 429
                assert int(refused.headers["retry-after"]) >= 1
                error = refused.json()["error"]
                assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        client = openai.OpenAI(base_url=f"{small.url}/v1", api_key="x", max_retries=0)
        wait_for(lambda: small.state.batcher.stats()["active_batch_size"] == 0)
        done = client.completions.create(model=small.state.name, prompt="Hi", max_tokens=2)
        assert done.usage.completion_tokens <= 2
    finally:
        small.stop()


# ----------------------------------------------------------------- bad requests

LONG_IDS = list(range(3, 3 + CONTEXT + 10))
C, CHAT = "/v1/completions", "/v1/chat/completions"
OK_CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_top_k_min_p_and_the_kl_exit(client, model_id, reference_model, serve_tokenizer):
    """The server takes top_k, min_p and the KL exit of `parcae.generate`, and answers what it
    answers for the same options."""
    ids = text_ids(serve_tokenizer, PROMPT)
    cases = [  # (the openai client's keywords, the extra body fields)
        (dict(temperature=0.9, seed=11), dict(top_k=5, min_p=0.05)),
        (dict(temperature=0), dict(adaptive_eps=0.05, adaptive_criterion="kl")),
    ]
    for keywords, extra in cases:
        answer = client.completions.create(
            model=model_id, prompt=PROMPT, max_tokens=12, extra_body=extra, **keywords
        )
        engine = {"adaptive" if k == "adaptive_eps" else k: v for k, v in extra.items()}
        text, _, _ = reference(reference_model, serve_tokenizer, ids, 12, **keywords, **engine)
        assert answer.choices[0].text == text


def test_bad_value_names_the_field(server):
    """A value out of range is a 400 whose message names the body field and the reason."""
    body = {"prompt": "x", "min_p": -0.5}
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "min_p must be in [0, 1], got -0.5"


BAD_REQUESTS = [
    # (id, path, body (bytes are sent raw), status, param, code)
    ("invalid-json", C, b'{"prompt": "x",', 400, None, "invalid_json"),
    ("not-an-object", C, b"[1, 2]", 400, None, "invalid_json"),
    ("not-utf8", C, b"\xff\xfe{", 400, None, "invalid_json"),
    ("missing-prompt", C, {"max_tokens": 4}, 400, "prompt", "missing_required_parameter"),
    ("missing-messages", CHAT, {"max_tokens": 4}, 400, "messages", "missing_required_parameter"),
    ("temperature-hot", C, {"prompt": "x", "temperature": "hot"}, 422, "temperature", None),
    ("max-tokens-string", C, {"prompt": "x", "max_tokens": "5"}, 422, "max_tokens", None),
    ("max-tokens-float", CHAT, {**OK_CHAT, "max_tokens": 2.5}, 422, "max_tokens", None),
    ("prompt-number", C, {"prompt": 5}, 422, "prompt", None),
    ("messages-string", CHAT, {"messages": "hi"}, 422, "messages", None),
    ("message-not-object", CHAT, {"messages": ["hi"]}, 422, "messages[0]", None),
    ("stream-string", C, {"prompt": "x", "stream": "yes"}, 422, "stream", None),
    ("stop-number", C, {"prompt": "x", "stop": 3}, 422, "stop", None),
    ("max-tokens-zero", C, {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", None),
    ("max-tokens-negative", CHAT, {**OK_CHAT, "max_tokens": -3}, 400, "max_tokens", None),
    (
        "max-tokens-beyond-context",
        C,
        {"prompt": "x", "max_tokens": CONTEXT},
        400,
        "max_tokens",
        "context_length_exceeded",
    ),
    ("temperature-negative", C, {"prompt": "x", "temperature": -0.5}, 400, "temperature", None),
    ("top-p-above-1", C, {"prompt": "x", "top_p": 2}, 400, "top_p", None),
    ("seed-negative", C, {"prompt": "x", "seed": -1}, 400, "seed", None),
    ("n-2", C, {"prompt": "x", "n": 2}, 400, "n", None),
    ("five-stops", C, {"prompt": "x", "stop": list("abcde")}, 400, "stop", None),
    ("unknown-model", C, {"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    (
        "prompt-ids-beyond-context",
        C,
        {"prompt": LONG_IDS},
        400,
        "prompt",
        "context_length_exceeded",
    ),
    (
        "prompt-text-beyond-context",
        C,
        {"prompt": "to be or not " * 200},
        400,
        "prompt",
        "context_length_exceeded",
    ),
    (
        "messages-beyond-context",
        CHAT,
        {"messages": [{"role": "user", "content": "to be or not " * 200}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
    ("prompt-empty", C, {"prompt": ""}, 400, "prompt", None),
    ("prompt-id-outside-vocab", C, {"prompt": [1, 99999]}, 400, "prompt", None),
    ("messages-empty", CHAT, {"messages": []}, 400, "messages", None),
    ("num-steps-zero", C, {"prompt": "x", "num_steps": 0}, 400, "num_steps", None),
    ("num-steps-negative", CHAT, {**OK_CHAT, "num_steps": -2}, 400, "num_steps", None),
    ("num-steps-absurd", C, {"prompt": "x", "num_steps": 10**9}, 400, "num_steps", None),
    ("num-steps-above-server", C, {"prompt": "x", "num_steps": 33}, 400, "num_steps", None),
    ("num-steps-string", C, {"prompt": "x", "num_steps": "deep"}, 422, "num_steps", None),
    ("adaptive-negative", C, {"prompt": "x", "adaptive_eps": -1}, 400, "adaptive_eps", None),
    ("top-k-zero", C, {"prompt": "x", "top_k": 0}, 400, "top_k", "invalid_value"),
    ("top-k-float", C, {"prompt": "x", "top_k": 2.5}, 422, "top_k", None),
    ("min-p-above-1", CHAT, {**OK_CHAT, "min_p": 1.5}, 400, "min_p", "invalid_value"),
    (
        "criterion-unknown",
        C,
        {"prompt": "x", "adaptive_eps": 0.1, "adaptive_criterion": "entropy"},
        400,
        "adaptive_criterion",
        "invalid_value",
    ),
    ("body-over-limit", C, b'{"prompt": "' + b"a" * (3 << 19) + b'"}', 413, None, None),
]


@pytest.mark.parametrize(
    "path, body, status, param, code",
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request(server, path, body, status, param, code):
    """Each bad request gets OpenAI's error JSON with its status, never a 500; the server stays
    up."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{server.url}{path}", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"] and "Traceback" not in response.text
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_body_over_limit_without_content_length(server):
    """The limit holds on the bytes read too (a chunked body declares no length)."""

    def chunks():
        yield b'{"prompt": "'
        for _ in range(24):
            yield b"a" * 65536
        yield b'"}'

    response = httpx.post(f"{server.url}{C}", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unknown_path_and_method(server):
    for response, status in (
        (httpx.get(f"{server.url}/v1/nothing"), 404),
        (httpx.get(f"{server.url}{C}"), 405),
        (httpx.get(f"{server.url}/v1/models/gpt-4"), 404),
    ):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_metrics_in_prometheus_text(server, client, model_id):
    """/metrics parses as Prometheus text, with the named metrics; no request so far (the bad
    ones included) was answered 500."""
    client.completions.create(model=model_id, prompt="x", max_tokens=2)
    samples = metrics(server)
    for name in (
        "parcae_requests_total",
        "parcae_tokens_generated_total",
        "parcae_tokens_per_second",
        "parcae_queue_depth",
        "parcae_active_batch_size",
        "parcae_mean_loop_steps_per_token",
    ):
        assert name in samples, name
    assert samples["parcae_requests_total"] >= 1
    assert samples["parcae_tokens_generated_total"] >= 2
    assert samples["parcae_mean_loop_steps_per_token"] > 0
    assert samples.get("parcae_http_responses_total{status=500}", 0) == 0
    assert samples["parcae_http_responses_total{status=200}"] >= 1


def test_chat_page_is_served(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and "http" not in page.text.split("<body>")[1]
    script = httpx.get(f"{server.url}/static/app.js")
    assert script.status_code == 200 and "/v1/chat/completions" in script.text


def test_unexpected_error_is_a_generic_500(server, monkeypatch):
    """A bug (here: the chat template raising) is a 500 with a generic message, no traceback;
    the server serves on. (Last in the module: the metrics test counts no 500.)"""

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(server.state.template, "prompt_ids", broken)
    response = httpx.post(f"{server.url}{CHAT}", json=OK_CHAT)
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "internal server error",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "secret" not in response.text
    monkeypatch.undo()
    assert httpx.post(f"{server.url}{CHAT}", json={**OK_CHAT, "max_tokens": 2}).status_code == 200
