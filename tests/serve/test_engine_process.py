"""The engine in a process of its own (`EngineProcess`): the same requests give the same
tokens as `parcae.generate` alone and as the batcher on a thread; cancellation, the queue
bound, stop, and a child that dies end requests as they should."""

from __future__ import annotations

import asyncio
import copy

import pytest

from parcae.errors import ConfigError
from parcae.serve import ContinuousBatcher, FinishEvent, QueueFull, TokenEvent
from parcae.serve.engine_process import EngineProcess, EngineStopped
from tests.infer.conftest import tiny_model
from tests.serve.test_batcher import alone, req

SLOW = dict(
    max_tokens=50, num_steps=16, temperature=0
)  # a request that runs long enough to be cancelled


@pytest.fixture(scope="module")
def model():
    return tiny_model("parcae-tiny")  # mean_recurrence 4, context 64


@pytest.fixture(scope="module")
def engine(model):
    """Two rows and a queue of eight, so that requests wait and join mid-stream."""
    with EngineProcess(model, max_batch=2, max_queue=8, max_num_steps=16, threads=1) as running:
        yield running


def mixed_requests():
    prompts = [[5, 9, 14], [7] * 11, [3, 30, 60, 90, 120, 150], [42], [8, 16, 24, 32, 40]]
    return [
        req(prompts[0], max_tokens=12, temperature=0),
        req(prompts[1], max_tokens=5, num_steps=2, temperature=0),
        req(prompts[2], max_tokens=9, temperature=0.8, seed=3),
        req(prompts[3], max_tokens=16, num_steps=8, top_k=5, temperature=1.0, seed=11),
        req(prompts[4], max_tokens=7, stop_token_ids={0, 1}, temperature=0),
    ]


def test_the_engine_process_generates_what_generate_does(engine, model):
    """Five requests on two rows (greedy and seeded, depths 2 to 8): each gets the tokens of
    `parcae.generate` alone, and the same tokens and loop steps as the batcher on a thread."""
    requests = mixed_requests()
    handles = [engine.submit(request) for request in requests]
    completions = [handle.result(timeout=120) for handle in handles]
    batcher = ContinuousBatcher(model, max_batch=2, max_queue=8, max_num_steps=16)
    threaded = [batcher.submit(request) for request in requests]
    batcher.run_until_idle()
    for request, completion, reference in zip(requests, completions, threaded):
        expected = reference.result(timeout=0)
        assert completion.token_ids == expected.token_ids
        assert completion.loop_steps == expected.loop_steps
        assert completion.finish == expected.finish
        stop = expected.finish.stop_token_id
        assert completion.token_ids + ([stop] if stop is not None else []) == alone(
            model, request, stop=min(request.stop_token_ids, default=None)
        )
    stats = engine.stats()
    assert stats["requests_finished_total"] >= len(requests)
    assert stats["active_batch_size"] == 0 and stats["queue_depth"] == 0


def test_events_reach_an_asyncio_consumer_in_order(engine, model):
    request = req([4, 8, 15, 16, 23, 42], max_tokens=20, temperature=0)

    async def consume():
        return [event async for event in engine.submit(request).events_async(timeout=120)]

    events = asyncio.run(consume())
    assert all(isinstance(event, TokenEvent) for event in events[:-1])
    assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "length"
    assert [event.token_id for event in events[:-1]] == alone(model, request)


def test_cancelled_requests_end_cancelled_and_the_queue_is_bounded(model):
    """One row and a queue of one: two requests are in flight, a third is refused; both
    cancelled ones end `cancelled` long before their 50 tokens, and the row serves again."""
    with EngineProcess(model, max_batch=1, max_queue=1, max_num_steps=16, threads=1) as small:
        running, waiting = small.submit(req([5, 6, 7], **SLOW)), small.submit(req([9], **SLOW))
        with pytest.raises(QueueFull, match="1 requests waiting"):
            small.submit(req([1, 2]))
        waiting.cancel()
        running.cancel()
        for handle in (running, waiting):
            completion = handle.result(timeout=60)
            assert completion.finish.finish_reason == "cancelled"
            assert len(completion.token_ids) < 50
        stats = small.stats()
        assert stats["requests_rejected_total"] == 1 and stats["requests_cancelled_total"] == 2
        again = small.submit(req([1, 2], max_tokens=3, temperature=0)).result(timeout=60)
        assert again.finish.finish_reason == "length" and len(again.token_ids) == 3


def test_stop_ends_requests_in_flight_and_later_submits_are_refused(model):
    small = EngineProcess(model, max_batch=1, max_queue=4, max_num_steps=16, threads=1)
    with pytest.raises(EngineStopped, match="not running"):
        small.submit(req([5]))
    small.start()
    handles = [small.submit(req([5, 6], **SLOW)) for _ in range(3)]
    small.stop()
    for handle in handles:
        assert handle.result(timeout=10).finish.finish_reason == "cancelled"
    with pytest.raises(EngineStopped):
        small.submit(req([5]))


def test_a_child_that_dies_ends_its_requests_with_an_error(model):
    small = EngineProcess(model, max_batch=1, max_queue=4, max_num_steps=16, threads=1)
    small.start()
    try:
        handles = [small.submit(req([5, 6], **SLOW)) for _ in range(2)]
        small._process.kill()
        for handle in handles:
            finish = handle.result(timeout=30).finish
            assert finish.finish_reason == "error"
            assert "the engine process exited" in finish.error
        with pytest.raises(EngineStopped):
            small.submit(req([5]))
    finally:
        small.stop()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(threads=0), "threads must be a positive integer, got 0"),
        (dict(max_batch=0), "max_batch must be a positive integer, got 0"),
        (dict(compile_depth=0), "compile_depth must be"),
    ],
)
def test_bad_settings_are_refused_before_a_process_starts(model, options, message):
    with pytest.raises(ConfigError, match=message):
        EngineProcess(model, **options)


def test_a_model_that_cannot_be_sent_is_one_error(model):
    """A model that does not pickle (here: a lambda on it) cannot reach a child: one
    `EngineStopped` that names the way out, and no process is left behind."""
    unpicklable = copy.copy(model)
    unpicklable.hook = lambda: None
    engine = EngineProcess(unpicklable, max_batch=1, threads=1)
    with pytest.raises(EngineStopped, match="--engine thread"):
        engine.start()
    with pytest.raises(EngineStopped, match="not running"):
        engine.submit(req([5], temperature=0))
