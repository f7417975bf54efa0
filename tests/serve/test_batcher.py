"""Continuous batching (`parcae.serve`): every request of a shared batch generates what
`parcae.generate` generates for it alone, whatever joins or leaves around it."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
import torch

import parcae
from parcae.errors import PromptError
from parcae.infer.sampling import SamplingParams
from parcae.model.cache import first_live_column, leading_rows
from parcae.serve import (
    ContinuousBatcher,
    FinishEvent,
    GenerationRequest,
    QueueFull,
    RowExit,
    TokenEvent,
)
from tests.infer.conftest import tiny_model

VOCAB = 300  # tests/infer/conftest.TINY


@pytest.fixture(scope="module")
def model():
    return tiny_model("parcae-tiny")  # mean_recurrence 4, context 64


@pytest.fixture(scope="module")
def gpt():
    return tiny_model("gpt-tiny")


def req(prompt_ids, stop_token_ids=frozenset(), max_tokens=16, adaptive_eps=None, **sampling):
    """A request under the server's names for two fields (max_tokens, adaptive_eps)."""
    params = SamplingParams(max_new_tokens=max_tokens, adaptive=adaptive_eps, **sampling)
    return GenerationRequest(prompt_ids, params, stop_token_ids)


def alone(model, request: GenerationRequest, stop: int | None = None) -> list[int]:
    """What `parcae.generate` produces for `request` alone (the same `SamplingParams`): its
    new tokens, up to and including the first stop token."""
    out = parcae.generate(
        model, [request.prompt_ids], sampling=request.sampling, eos_token_id=stop
    )[0, len(request.prompt_ids) :].tolist()
    if stop is not None and stop in out:
        out = out[: out.index(stop) + 1]
    return out


def served(handle) -> list[int]:
    """A finished handle's tokens, with the stop token that ended it (as `generate` has it)."""
    completion = handle.result(timeout=0)
    stop = completion.finish.stop_token_id
    return completion.token_ids + ([] if stop is None else [stop])


def random_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(length)]


def test_mixed_requests_join_mid_stream(model):
    """20 requests (prompts of 1 to 24 tokens, 1 to 40 new tokens, a third with a stop token
    that occurs) join a batch of 6 at staggered steps: slots are reused, the timeline is
    compacted, and each greedy result equals its own `generate`."""
    rng = random.Random(0)
    requests, expected = [], []
    for index in range(20):
        prompt = random_prompt(rng, rng.randint(1, 24))
        request = req(prompt, max_tokens=rng.randint(1, 40), temperature=0)
        stop = None
        if index % 3 == 0 and request.max_tokens > 4:
            stop = alone(model, request)[request.max_tokens // 2]  # occurs: ends it early
            request.stop_token_ids = frozenset([stop])
        requests.append(request)
        expected.append(alone(model, request, stop))
    batcher = ContinuousBatcher(model, max_batch=6, max_queue=32, cache_length=64)
    handles, joined_mid_stream = [], 0
    for request in requests:
        joined_mid_stream += batcher.stats()["active_batch_size"] > 0
        handles.append(batcher.submit(request))
        for _ in range(rng.randint(0, 4)):
            batcher.step()
    batcher.run_until_idle()
    assert [served(handle) for handle in handles] == expected
    stats = batcher.stats()
    assert joined_mid_stream >= 10
    assert stats["compactions_total"] >= 1
    assert stats["requests_total"] == stats["requests_finished_total"] == 20
    assert stats["tokens_generated_total"] == sum(len(tokens) for tokens in expected)
    assert stats["active_batch_size"] == stats["queue_depth"] == 0
    assert stats["mean_loop_steps_per_token"] == 4.0
    reasons = [handle.result(timeout=0).finish.finish_reason for handle in handles]
    assert reasons.count("stop") == sum(1 for r in requests if r.stop_token_ids)
    usage = handles[0].result(timeout=0).finish.usage
    assert usage.prompt_tokens == len(requests[0].prompt_ids)
    assert usage.completion_tokens == len(expected[0])


def test_depths_share_a_batch(model):
    """Rows of depths 1 to 8 (and one adaptive) decode in one batch, each equal to its own
    `generate` at its depth; the loop steps reported are each row's own."""
    rng = random.Random(1)
    depths = [1, 2, 3, 4, 5, 8, 6, 2]
    requests = [
        req(random_prompt(rng, rng.randint(2, 12)), max_tokens=12, temperature=0, num_steps=t)
        for t in depths
    ]
    requests.append(req(random_prompt(rng, 9), max_tokens=12, temperature=0, adaptive_eps=0.3))
    batcher = ContinuousBatcher(model, max_batch=len(requests), max_num_steps=8)
    handles = [batcher.submit(request) for request in requests]
    batcher.run_until_idle()
    for request, handle in zip(requests, handles):
        assert served(handle) == alone(model, request)
    for depth, handle in zip(depths, handles):
        assert set(handle.result(timeout=0).loop_steps) == {depth}
    adaptive = handles[-1].result(timeout=0).finish.usage.mean_loop_steps
    assert 0 < adaptive <= 4


def test_row_exit_matches_fixed_depth(model):
    """A row that exits at its T in a cache of 8 steps computes a cached forward at T (the
    prefill bit for bit; a decode step to float rounding, where rows of other depths make the
    loop gather its active tokens)."""
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    for depth in (1, 3, 5):
        deep, fixed = model.new_cache(3, 16, 8), model.new_cache(3, 16, depth)
        rule = RowExit(torch.tensor([depth, 8, 2]), torch.zeros(3))
        prefill = model(ids, cache=deep, exit_rule=rule).logits[0]
        assert torch.equal(prefill, model(ids, cache=fixed).logits[0])
        rule = RowExit(torch.tensor([depth, 8, 2]), torch.zeros(3))
        step = model(ids[:, -1:], cache=deep, exit_rule=rule).logits[0]
        torch.testing.assert_close(step, model(ids[:, -1:], cache=fixed).logits[0])


def test_cache_admit_and_compact(model):
    """`KVCache.admit` places a prompt prefilled alone into one row while another row keeps
    decoding, and `compact` shrinks the timeline; each row's next logits match its own cache."""
    prompts = [torch.arange(3, 10)[None], torch.arange(40, 44)[None]]
    alone_caches = [model.new_cache(1, 16, 4) for _ in prompts]
    for prompt, cache in zip(prompts, alone_caches):
        model(prompt, cache=cache)
    shared = model.new_cache(3, 32, 4)
    shared.admit(0, alone_caches[0])
    step = torch.tensor([[7], [0], [0]])
    model(step, cache=shared, attention_mask=torch.tensor([[True], [False], [False]]))
    model(step[:1], cache=alone_caches[0])
    shared.admit(2, alone_caches[1])
    assert shared.length == 8 and shared.valid.sum(dim=1).tolist() == [8, 0, 4]
    shared.compact()
    assert shared.length == 8 and shared.positions[0, :8].tolist() == list(range(8))
    assert shared.positions[2, 4:8].tolist() == list(range(4))
    both = model(
        torch.tensor([[11], [0], [12]]),
        cache=shared,
        attention_mask=torch.tensor([[True], [False], [True]]),
    )
    for row, (token, cache) in zip((0, 2), zip((11, 12), alone_caches)):
        own = model(torch.tensor([[token]]), cache=cache).logits[0]
        torch.testing.assert_close(both.logits[row], own)
    shared.release([0])
    shared.compact()
    assert shared.length == 5  # row 2: 4 prompt tokens and one step


def test_a_step_skips_the_columns_no_row_holds(model):
    """A decode step over the columns from `first_live_column` on computes what a step over
    every column computes (the skipped ones are hidden from every row; float32 rounding of the
    attention's sums apart) and leaves the timeline as long."""
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    valid = torch.arange(12)[None] >= torch.tensor([[7], [4]])  # 5 and 8 real tokens
    caches = [model.new_cache(2, 32, 4) for _ in range(2)]
    for cache in caches:
        model(ids, cache=cache, attention_mask=valid)
    assert first_live_column(caches[0], 2) == 4
    assert first_live_column(caches[0], 1) == 7
    step = torch.tensor([[5], [6]])
    logits = []
    for cache, first in zip(caches, (0, 4)):
        view = leading_rows(cache, 2, columns=cache.length + 1, first=first)
        logits.append(model(step, cache=view).logits)
        cache.length = first + view.length
    torch.testing.assert_close(logits[1], logits[0])
    assert caches[0].length == caches[1].length == 13
    caches[0].release([0, 1])
    assert first_live_column(caches[0], 2) == 13


def test_seeds_reproducible_whatever_shares_the_batch(model):
    """A seeded request draws the same tokens alone, among other sampled requests, and in
    `generate` with that seed."""
    seeded = req([5, 6, 7, 8], max_tokens=16, temperature=1.2, top_p=0.95, seed=1234, num_steps=4)
    others = [req([9] * n, max_tokens=20, temperature=1.0, seed=n) for n in (1, 3, 6)]
    others.append(req([1, 2], max_tokens=20, temperature=0.7))  # global RNG
    results = []
    for company in ([], others, others[::-1]):
        batcher = ContinuousBatcher(model, max_batch=3, max_num_steps=4)
        handles = [batcher.submit(r) for r in company[:2]]
        batcher.step()
        handle = batcher.submit(seeded)
        handles += [batcher.submit(r) for r in company[2:]]
        batcher.run_until_idle()
        results.append(served(handle))
    assert results[0] == results[1] == results[2] == alone(model, seeded)
    assert len(set(results[0])) > 3  # really sampled


def test_cancel_frees_the_slot(model):
    """Cancelling a long active request lets the waiting one start at the next step; a
    waiting request can be cancelled too; the slot count goes back."""
    batcher = ContinuousBatcher(model, max_batch=1)
    long = batcher.submit(req([1, 2, 3], max_tokens=60, temperature=0))
    short_request = req([4, 5], max_tokens=5, temperature=0)
    waiting = batcher.submit(short_request)
    dropped = batcher.submit(req([6], max_tokens=5, temperature=0))
    for _ in range(3):
        batcher.step()
    stats = batcher.stats()
    assert (stats["active_batch_size"], stats["queue_depth"]) == (1, 2)
    long.cancel()
    dropped.cancel()
    batcher.step()
    stats = batcher.stats()
    assert (stats["active_batch_size"], stats["queue_depth"]) == (1, 0)
    finish = long.result(timeout=0).finish
    assert finish.finish_reason == "cancelled" and finish.usage.completion_tokens == 4
    assert dropped.result(timeout=0).finish.finish_reason == "cancelled"
    batcher.run_until_idle()
    assert served(waiting) == alone(model, short_request)
    assert batcher.stats()["active_batch_size"] == 0
    assert batcher.stats()["requests_cancelled_total"] == 2
    assert batcher._active == []


def test_full_queue_raises(model):
    batcher = ContinuousBatcher(model, max_batch=1, max_queue=2)
    for _ in range(2):
        batcher.submit(req([1], max_tokens=2, temperature=0))
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit(req([1], max_tokens=2, temperature=0))
    assert batcher.stats()["requests_rejected_total"] == 1
    batcher.step()  # one admitted: room again
    batcher.submit(req([1], max_tokens=2, temperature=0))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(num_steps=0), r"num_steps must be an integer in \[1, 1024\], got 0"),
        (dict(num_steps=10**6), r"num_steps must be an integer in \[1, 1024\]"),
        (dict(num_steps=9), "runs at most 8 loop steps"),
        (dict(temperature=-0.5), "temperature must be 0 .greedy. or a finite number >= 1e-06"),
        (dict(temperature=1e-39), "temperature must be 0 .greedy. or a finite number >= 1e-06"),
        (dict(temperature=float("nan")), "temperature must be 0 .greedy."),
        (dict(temperature="hot"), "temperature must be 0 .greedy. or a finite number"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(prompt_ids=list(range(64))), "prompt has 64 tokens"),
        (dict(prompt_ids=[]), "prompt is empty"),
        (dict(prompt_ids=[1, 300]), "token id 300 outside the vocabulary"),
        (dict(max_tokens=0), "max_new_tokens must be at least 1"),
        (dict(max_tokens=-3), "max_new_tokens must be an integer >= 0"),
        (dict(max_tokens=62), "at most 61 new tokens fit"),
        (dict(adaptive_eps=-1.0), "adaptive must be a finite number >= 0"),
        (dict(min_p=2.0), r"min_p must be in \[0, 1\]"),
        (dict(top_k=0), "top_k must be an integer >= 1"),
        (dict(adaptive_eps=0.1, adaptive_criterion="entropy"), "adaptive_criterion must be one of"),
        (dict(stop_token_ids=[400]), "stop token id 400 is outside"),
    ],
)
def test_bad_requests(model, fields, message):
    batcher = ContinuousBatcher(model, max_num_steps=8)
    with pytest.raises(PromptError, match=message):
        batcher.submit(req(**{"prompt_ids": [1, 2, 3], "max_tokens": 4, **fields}))
    assert batcher.stats()["requests_total"] == 0


def test_gpt_ignores_depth(gpt):
    rng = random.Random(2)
    requests = [
        req(random_prompt(rng, n), max_tokens=10, temperature=0, num_steps=t)
        for n, t in ((3, 2), (11, None), (6, 7))
    ]
    batcher = ContinuousBatcher(gpt, max_batch=2)
    handles = [batcher.submit(request) for request in requests]
    batcher.run_until_idle()
    for request, handle in zip(requests, handles):
        assert served(handle) == alone(gpt, request)
        assert handle.result(timeout=0).finish.usage.mean_loop_steps == 0.0


def test_background_thread_and_async_consumers(model):
    """The loop in its thread; requests submitted from threads at staggered times and
    consumed with `events_async`; one consumer that stops early cancels its request."""
    rng = random.Random(3)
    requests = [
        req(random_prompt(rng, rng.randint(1, 10)), max_tokens=8, temperature=0) for _ in range(6)
    ]

    async def consume(batcher, request, delay):
        await asyncio.sleep(delay)
        handle = await asyncio.get_running_loop().run_in_executor(None, batcher.submit, request)
        tokens, finish = [], None
        async for event in handle.events_async():
            if isinstance(event, TokenEvent):
                tokens.append(event.token_id)
            else:
                finish = event
        return tokens, finish

    async def leave_early(batcher):
        handle = batcher.submit(req([7, 7], max_tokens=60, temperature=0))
        async for event in handle.events_async():
            assert isinstance(event, TokenEvent)
            break  # closing the generator cancels the request
        return handle

    async def main(batcher):
        return await asyncio.gather(
            leave_early(batcher),
            *(consume(batcher, r, 0.01 * i) for i, r in enumerate(requests)),
        )

    with ContinuousBatcher(model, max_batch=3, max_num_steps=4) as batcher:
        early, *results = asyncio.run(main(batcher))
        finish = early.result(timeout=10).finish
        assert finish.finish_reason == "cancelled"
    for request, (tokens, finish) in zip(requests, results):
        assert isinstance(finish, FinishEvent) and finish.finish_reason == "length"
        assert tokens == alone(model, request)
    assert not any(t.name == "parcae-batcher" for t in threading.enumerate())


def test_async_batches_and_time_limit(model):
    """An asyncio consumer gets, in one batch, every event that arrived while it was away (the
    steps ran before it listened: the tokens then the finish); a consumer whose time limit
    passes gets `TimeoutError`, and its request is cancelled."""
    request = req([4, 5, 6], max_tokens=5, temperature=0)
    batcher = ContinuousBatcher(model, max_batch=2, max_num_steps=4)
    handle = batcher.submit(request)
    batcher.run_until_idle()

    async def batches(handle, timeout=None):
        return [batch async for batch in handle.batches_async(timeout)]

    (batch,) = asyncio.run(batches(handle))
    assert [e.token_id for e in batch[:-1]] == alone(model, request)
    assert isinstance(batch[-1], FinishEvent) and batch[-1].finish_reason == "length"

    waiting = batcher.submit(req([4, 5], max_tokens=5))
    with pytest.raises(TimeoutError):
        asyncio.run(batches(waiting, timeout=0))
    batcher.run_until_idle()
    assert waiting.result(timeout=0).finish.finish_reason == "cancelled"


def test_ring_sharing_serves_one_depth(model):
    """With `ring:2` the slots a step reads depend on T: the batcher serves its one depth
    (equal to `generate` with that sharing) and refuses others."""
    batcher = ContinuousBatcher(model, max_batch=2, max_num_steps=4, cache_sharing="ring:2")
    with pytest.raises(PromptError, match="with cache sharing ring:2 this server runs 4"):
        batcher.submit(req([1, 2], max_tokens=3, num_steps=2))
    requests = [req(list(range(5, 5 + n)), max_tokens=10, temperature=0) for n in (3, 9, 6)]
    handles = [batcher.submit(request) for request in requests]
    batcher.run_until_idle()
    for request, handle in zip(requests, handles):
        expected = parcae.generate(
            model, [request.prompt_ids], 10, temperature=0, cache_sharing="ring:2"
        )[0, len(request.prompt_ids) :].tolist()
        assert served(handle) == expected


def test_engine_failure_ends_requests_with_an_error(model, monkeypatch):
    """A forward that fails in the background loop ends every request it holds with
    finish_reason `error` (never a consumer waiting forever); the loop serves on."""
    with ContinuousBatcher(model, max_batch=2, max_num_steps=4) as batcher:
        original = batcher.decoder.step
        calls = []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("out of memory")
            return original(*args, **kwargs)

        monkeypatch.setattr(batcher.decoder, "step", failing)
        handle = batcher.submit(req([1, 2, 3], max_tokens=20, temperature=0))
        finish = handle.result(timeout=10).finish
        assert finish.finish_reason == "error" and "out of memory" in finish.error
        monkeypatch.setattr(batcher.decoder, "step", original)
        after = req([4, 5], max_tokens=5, temperature=0)
        assert served_after(batcher.submit(after)) == alone(model, after)


def test_a_row_whose_sampling_fails_ends_alone(model):
    """A row whose draw fails (a temperature that rounds to 0 in float32 makes its logits NaN;
    set after the checks, as a bug elsewhere could) ends with `error`; the rows decoding beside
    it generate what they generate alone."""
    batcher = ContinuousBatcher(model, max_batch=3, max_num_steps=4)
    normal = [req([1, 2, 3], max_tokens=6, temperature=0.9, seed=s) for s in (1, 2)]
    handles = [batcher.submit(request) for request in normal]
    poisoned = batcher.submit(req([4, 5], max_tokens=6, temperature=0.5, seed=3))
    object.__setattr__(poisoned.request.sampling, "temperature", 1e-300)  # past the checks
    batcher.run_until_idle()
    finish = poisoned.result(timeout=0).finish
    assert finish.finish_reason == "error" and "sampling failed" in finish.error
    for request, handle in zip(normal, handles):
        assert served(handle) == alone(model, request)


def served_after(handle) -> list[int]:
    handle.result(timeout=10)
    return served(handle)


def test_steps_run_the_active_rows_only_and_prefill_together(model, monkeypatch):
    """Waiting requests are prefilled in one forward; each decode step runs over exactly the
    active rows (packed at the front, a row leaving from the middle takes the last one's
    sequence), and every request still generates what it generates alone."""
    rng = random.Random(5)
    batcher = ContinuousBatcher(model, max_batch=8, max_num_steps=4)
    prefills, steps = [], []
    prefill, step = batcher.decoder.prefill, batcher.decoder.step

    def record_prefill(cache, ids, *args):
        prefills.append(ids.shape[0])
        return prefill(cache, ids, *args)

    def record_step(cache, tokens, *args):
        steps.append((tokens.shape[0], cache.batch_size, len(batcher._active)))
        return step(cache, tokens, *args)

    monkeypatch.setattr(batcher.decoder, "prefill", record_prefill)
    monkeypatch.setattr(batcher.decoder, "step", record_step)
    lengths = (20, 3, 12, 6, 9)
    requests = [req(random_prompt(rng, 2 + n % 7), max_tokens=n, temperature=0) for n in lengths]
    handles = [batcher.submit(request) for request in requests[:4]]
    batcher.step()
    handles.append(batcher.submit(requests[4]))  # joins while rows 0-3 decode
    batcher.run_until_idle()
    assert prefills == [4, 1]
    assert all(width == rows == active for width, rows, active in steps)
    assert steps[0][0] == 4 and steps[-1][0] == 1 and len({w for w, _, _ in steps}) >= 4
    for request, handle in zip(requests, handles):
        assert served(handle) == alone(model, request)


def test_padded_windows_change_nothing(model, monkeypatch):
    """With compile, a step's window is rounded up to a power of two (few compiled shapes):
    the padding rows (eager here) change no request's tokens, sampled or greedy."""
    rng = random.Random(6)
    batcher = ContinuousBatcher(model, max_batch=8, max_num_steps=4, compile=True)
    monkeypatch.setattr(batcher.decoder, "compile", False)  # the windows of compile, eagerly
    requests = [
        req(random_prompt(rng, 3 + n), max_tokens=4 + 3 * n, temperature=0.8, seed=n)
        for n in range(5)
    ] + [req(random_prompt(rng, 4), max_tokens=9, temperature=0)]
    handles = [batcher.submit(request) for request in requests]
    batcher.run_until_idle()
    for request, handle in zip(requests, handles):
        assert served(handle) == alone(model, request)


def test_a_compiled_batcher_compiles_every_window_before_serving(model, monkeypatch, capsys):
    """With compile, `warm_up` (run by `start`) steps each window a step can run (1, 2, 4 and
    max_batch 5 rows) at the default depth before any request, says so on stderr, leaves the
    cache empty and runs once; the requests then get what `parcae.generate` gives (eager
    here: which shapes get compiled is the point, not compiling them)."""
    batcher = ContinuousBatcher(model, max_batch=5, max_num_steps=8, compile=True)
    monkeypatch.setattr(batcher.decoder, "compile", False)
    stepped, step = [], batcher.decoder.step

    def recording_step(cache, tokens, *rest):
        stepped.append((tokens.shape[0], cache.num_steps))
        return step(cache, tokens, *rest)

    monkeypatch.setattr(batcher.decoder, "step", recording_step)
    batcher.warm_up()
    assert stepped == [(1, 4), (2, 4), (4, 4), (5, 4)]  # mean_recurrence 4
    assert batcher.cache.length == 0 and not bool(batcher.cache.valid.any())
    err = capsys.readouterr().err
    assert err.count("parcae: compiled the decode step for") == 4 and "5 rows" in err
    batcher.warm_up()
    assert len(stepped) == 4
    requests = [req([5, 6, 7], max_tokens=6, temperature=0), req([9], max_tokens=4, temperature=0)]
    handles = [batcher.submit(request) for request in requests]
    batcher.run_until_idle()
    for request, handle in zip(requests, handles):
        assert served(handle) == alone(model, request)


def test_top_k_min_p_and_kl_rows_equal_generate(model):
    """The server's rows take every option of `SamplingParams`: top_k and min_p sampling and
    the KL exit, each equal to `parcae.generate` with the same params, in one batch."""
    requests = [
        req([5, 6, 7], max_tokens=10, temperature=0.8, top_k=4, min_p=0.1, seed=5),
        req([8, 9], max_tokens=10, temperature=0, adaptive_eps=0.05, adaptive_criterion="kl"),
        req([1, 2, 3, 4], max_tokens=10, temperature=0, num_steps=2),
    ]
    batcher = ContinuousBatcher(model, max_batch=3, max_num_steps=4)
    handles = [batcher.submit(request) for request in requests]
    batcher.run_until_idle()
    for request, handle in zip(requests, handles):
        assert served(handle) == alone(model, request)
    kl_steps = handles[1].result(timeout=0).finish.usage.mean_loop_steps
    assert 2 <= kl_steps < 4  # the KL exit stops after two steps at the earliest
