"""Continuous batching: one decode loop over one `KVCache` serves every active request.

`ContinuousBatcher(model, max_batch, max_queue, max_num_steps, cache_sharing, compile=...)` holds
a cache of `max_batch` rows (one row per active request) and a bounded queue of waiting
requests. `submit(request)` checks the request, queues it and returns a `Handle` whose events
are the request's tokens as they come, then one `FinishEvent`. Each scheduling iteration
(`step()`; `start()` runs it in a background thread) does, in order:

1. cancelled requests leave: a waiting one is dropped, an active one's row is freed at once;
2. waiting requests take the free rows (first come, first served) and are prefilled *together*:
   one forward over their left-padded prompts in a cache of their own (per-row positions, so
   each row computes what it computes alone); each samples its first token, and its keys and
   values are placed into its row of the shared cache (`KVCache.admit`; the other rows keep
   their state);
3. one decode step over the active rows feeds each its last token; each row samples its next
   token, and a row that produced a stop token or its `max_new_tokens` leaves.

Nothing runs as padding: the active rows are kept packed at the front of the cache (a row that
leaves takes the last active row's sequence, `move_row`), and a decode step runs over the
leading window of the active rows only, over the columns they hold (`leading_rows`, from
`first_live_column`; with `compile`, the window is rounded up to a power of two and spans the
whole timeline, so that at most log2(max_batch) + 1 shapes are compiled). Prefill, the steps
and sampling are those of the one decoder (`parcae.infer.decoder`: `ModelDecoder`,
`sample_rows`, `RowExit`), which `parcae.generate` drives too. When the cache's column timeline
fills, it is compacted (`KVCache.compact`: each row's real columns moved to the right end;
nothing a row computes changes).

What one decode step shares, and what it does not:

- shared: a single forward of the active rows (prelude, core loop, coda, head) over the one
  cache. Rows of different prompt lengths and join times sit on one column timeline with left
  padding: each row has its own positions (starting at 0 for its prompt, so RoPE and the loop's
  initial state are what they are alone) and attends only to its own columns.
- shared, with full cache sharing (the default): loop depth. The cache is built for
  `max_num_steps`; a step runs the deepest active row's depth. When every active row has the
  same depth and no adaptive exit, the step is the fast single-token step
  (`parcae.model.decode`, compiled with `compile=True`) at that depth; otherwise the general
  forward, where a row of depth T stops after its own T steps through `RowExit` (its tokens are
  then frozen: skipped by the loop, its deeper cache slots keep its step-T keys), and a row with
  an adaptive threshold also stops when its residual or KL criterion falls below it. A row that
  stops at T computes what a cached forward at `num_steps=T` computes, to float rounding (about
  1e-6 in the logits) where the loop gathers the tokens still running into smaller matrices.
  Every row's greedy tokens equal those of `parcae.generate` run alone at its depth (tested,
  with rows of several depths and an adaptive row in one batch, joining and leaving).
- not shared with cache sharing `ring:M` / `last:M`: depth. Which slot a step reads there
  depends on T, so rows of another depth would read other steps' keys; such a batcher serves one
  depth, `max_num_steps`, and refuses others (a `PromptError`).
- not shared: sampling (per row, under its own `SamplingParams`, with its own `torch.Generator`
  seeded from its seed, so a seeded request draws the same tokens whatever shares the batch, and
  the same as `parcae.generate` with that seed), stop tokens and `max_new_tokens`.

The stop token that ends a request is not sent as a `TokenEvent`: it is the `FinishEvent`'s
`stop_token_id`, and it counts in `completion_tokens` (as in `generate`'s stats). A request's
`mean_loop_steps` is the mean over its generated tokens of the loop steps of the forward that
produced each one (the prefill's last token for the first); 0 for a GPT.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import torch

from parcae.errors import ConfigError, ParcaeError, PromptError
from parcae.infer.decoder import ModelDecoder, RowExit, new_generator, sample_rows
from parcae.infer.generate import prepare_prompts
from parcae.infer.sampling import SamplingParams
from parcae.model.base import check_num_steps
from parcae.model.cache import CacheSharing, first_live_column, leading_rows, move_row
from parcae.serve.requests import GenerationRequest

FINISH_REASONS = ("stop", "length", "cancelled", "error")
RATE_WINDOW_S = 10.0  # tokens/s is measured over this trailing window


class QueueFull(ParcaeError):
    """The batcher's queue holds `max_queue` waiting requests (an HTTP server answers 429).
    `retry_after`: a suggested wait in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenEvent:
    """A generated token and the loop steps of the forward that produced it."""

    token_id: int
    loop_steps: int


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    mean_loop_steps: float


@dataclass(frozen=True)
class FinishEvent:
    """The last event of a request. finish_reason: `stop` (a stop token, `stop_token_id`),
    `length` (max_tokens), `cancelled`, or `error` (the engine failed; `error` says why)."""

    finish_reason: str
    usage: Usage
    stop_token_id: int | None = None
    error: str | None = None


Event = TokenEvent | FinishEvent


@dataclass(frozen=True)
class Completion:
    """What `Handle.result()` returns: every token sent and the finish event."""

    token_ids: list[int]
    loop_steps: list[int]
    finish: FinishEvent


_EXPIRED = object()  # put in an asyncio consumer's queue when its time limit passes


class Handle:
    """A submitted request's events (thread-safe). Consume them once, either synchronously
    (`for event in handle`, `handle.get()`, `handle.result()`) or from asyncio
    (`async for batch in handle.batches_async()`, or one event at a time with
    `events_async()`: the events of each scheduling iteration reach the event loop in one
    `call_soon_threadsafe` per loop (`Outbox`), no thread waits per request). `cancel()` ends
    the request at the next step boundary (a `FinishEvent` with finish_reason `cancelled`)."""

    def __init__(self, request_id: int, request: GenerationRequest, batcher: Engine):
        self.id = request_id
        self.request = request
        self._batcher = batcher
        self._lock = threading.Lock()
        self._queue: queue.Queue[Event] = queue.Queue()
        self._sink: tuple[Destination, object] | None = None  # where events go, and its key
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._token_ids: list[int] = []
        self._loop_steps: list[int] = []
        self.finish: FinishEvent | None = None

    # ------------------------------------------------------------ producer side (engine)

    def _put(self, event: Event, outbox: Outbox | None = None) -> None:
        """Record `event` and pass it on: to the thread-side queue, or to the asyncio consumer
        through `outbox` (sent when the batcher flushes it) or at once without one."""
        with self._lock:
            if isinstance(event, TokenEvent):
                self._token_ids.append(event.token_id)
                self._loop_steps.append(event.loop_steps)
            else:
                self.finish = event
                self._finished.set()
            if self._sink is None:
                self._queue.put(event)
                return
            destination, sink = self._sink
        pending = Outbox() if outbox is None else outbox
        pending.add(destination, (self, sink, event))
        if outbox is None:  # no iteration to send it with: at once
            pending.flush()

    def _redirect(self, destination: Destination, key: object) -> list[Event]:
        """Send later events to `destination` (each with `key`, see `Destination`); returns
        those already queued, which the caller delivers before any later one."""
        with self._lock:
            early = []
            while True:
                try:
                    early.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._sink = (destination, key)
            return early

    # ------------------------------------------------------------ consumer side

    def cancel(self) -> None:
        """Cancel the request (a no-op once it has finished)."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._batcher.cancel_requested(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self.finish is not None

    def get(self, timeout: float | None = None) -> Event:
        """The next event (blocks; `queue.Empty` after `timeout` seconds)."""
        return self._queue.get(timeout=timeout)

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._queue.get()
            yield event
            if isinstance(event, FinishEvent):
                return

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the end (`TimeoutError` after `timeout` seconds); every token sent and
        the finish event. The handle records them itself: this reads no event stream and may be
        called again, or after the events were consumed."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish in {timeout} s")
        with self._lock:
            return Completion(list(self._token_ids), list(self._loop_steps), self.finish)

    async def batches_async(self, timeout: float | None = None) -> AsyncIterator[list[Event]]:
        """The events on the running asyncio loop, in batches: each batch holds every event
        that has arrived since the last (at least one; a consumer that keeps up gets one token
        per scheduling iteration, one that falls behind gets them together). `TimeoutError`
        once `timeout` seconds have passed. The request is cancelled if the consumer stops
        early (a client that disconnects) or times out."""
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue = asyncio.Queue()
        for event in self._redirect(LoopDestination.of(loop), sink):
            sink.put_nowait(event)
        timer = None if timeout is None else loop.call_later(timeout, sink.put_nowait, _EXPIRED)
        finished = False
        try:
            while not finished:
                batch = [await sink.get()]
                while not sink.empty():
                    batch.append(sink.get_nowait())
                if _EXPIRED in batch:
                    raise TimeoutError(f"request {self.id} ran past {timeout} s")
                finished = isinstance(batch[-1], FinishEvent)
                yield batch
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:  # later events (the cancellation's) go to the thread-side queue
                self._sink = None
                while not sink.empty():
                    event = sink.get_nowait()
                    if event is not _EXPIRED:
                        self._queue.put(event)
            if not finished:
                self.cancel()

    async def events_async(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """`batches_async`, one event at a time."""
        async with aclosing(self.batches_async(timeout)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event


class Destination(Protocol):
    """Where a batch of events goes at the end of a scheduling iteration: `post(items)`, items
    (handle, key, event) in the order they were produced (key: what the destination needs to
    route each, see `Handle._sink`)."""

    def post(self, items: list[tuple[Handle, object, Event]]) -> None: ...


class LoopDestination:
    """Events for consumers on one asyncio event loop (`Handle.batches_async`), the key each
    consumer's `asyncio.Queue`: one `call_soon_threadsafe` per batch (a wake-up of the loop and
    a write to its self-pipe), not one per token. A loop that has closed cancels its requests
    (nobody is listening). One per loop (`of`), so that an outbox groups by loop."""

    _of_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopDestination:
        with cls._lock:
            destination = cls._of_loop.get(loop)
            if destination is None:
                destination = cls._of_loop[loop] = cls(loop)
            return destination

    def post(self, items: list[tuple[Handle, object, Event]]) -> None:
        try:
            self.loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # the consumer's event loop is closed
            for handle, _, _ in items:
                handle.cancel()


def _deliver(items: list[tuple[Handle, asyncio.Queue, Event]]) -> None:
    for _, sink, event in items:
        sink.put_nowait(event)


class Outbox:
    """Events bound for destinations (`Destination`), held during a scheduling iteration and
    posted at its end, one batch per destination."""

    def __init__(self) -> None:
        self._pending: dict[Destination, list[tuple[Handle, object, Event]]] = {}

    def add(self, destination: Destination, item: tuple[Handle, object, Event]) -> None:
        self._pending.setdefault(destination, []).append(item)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for destination, items in pending.items():
            destination.post(items)


@dataclass
class _Sequence:
    """An admitted request: its row in the cache and what it has generated."""

    handle: Handle
    request: GenerationRequest
    depth: int
    generator: torch.Generator | None
    row: int | None = None
    pending: int = 0  # the last sampled token, fed by the next decode step
    generated: int = 0
    steps_total: int = 0
    stop_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def params(self) -> SamplingParams:
        return self.request.sampling


@dataclass(frozen=True)
class EngineSettings:
    """What a serving engine admits, resolved and checked once (`resolve`): max_batch rows,
    max_queue waiting requests, the deepest loop `max_num_steps` (0 for a GPT) and the cache
    sharing; `check(model, request)` refuses a request with one `PromptError`."""

    max_batch: int
    max_queue: int
    max_num_steps: int
    sharing: CacheSharing

    @classmethod
    def resolve(
        cls,
        model,
        max_batch: int,
        max_queue: int,
        max_num_steps: int | None,
        cache_sharing,
        threads: int | None = None,
        compile_depth: int | None = None,
    ) -> EngineSettings:
        """max_num_steps defaults to twice the model's default_depth with full sharing, the
        default_depth with other sharing (where it is the one depth served). The engine's
        `threads` (None or a positive integer) and `compile_depth` (None or a depth) are
        checked here too."""
        counts = {"max_batch": max_batch, "max_queue": max_queue}
        if threads is not None:
            counts["threads"] = threads
        for name, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        check_num_steps(max_num_steps, "max_num_steps")
        check_num_steps(compile_depth, "compile_depth")
        config = model.config
        sharing = CacheSharing.parse(cache_sharing)
        if config.is_looped and max_num_steps is None:
            max_num_steps = (2 if sharing.kind == "full" else 1) * config.default_depth
        return cls(max_batch, max_queue, max_num_steps if config.is_looped else 0, sharing)

    def check(self, model, request: GenerationRequest) -> None:
        """The request's own checks (`GenerationRequest.check`), and its depth against this
        engine's."""
        request.check(model)
        depth = request.depth(model)
        if not model.config.is_looped:
            return
        if depth > self.max_num_steps:
            raise PromptError(
                f"num_steps is {depth}; this server runs at most {self.max_num_steps} loop steps"
            )
        if self.sharing.kind != "full" and depth != self.max_num_steps:
            raise PromptError(
                f"num_steps is {depth}; with cache sharing {self.sharing} this server runs "
                f"{self.max_num_steps} loop steps only"
            )


class Engine:
    """What a server drives: `submit(request) -> Handle`, `cancel_requested(handle)` (from
    `Handle.cancel`), `stats()`, `start()`, `stop()`, and `max_batch`, `max_queue`,
    `max_num_steps`. A context manager that starts and stops it. Two implement it: the
    `ContinuousBatcher` (on a thread of this process) and `parcae.serve.engine_process`'s
    `EngineProcess` (the batcher in a child process)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ContinuousBatcher(Engine):
    """One decode loop serving many requests over one `KVCache` (module docstring).

    max_batch: rows of the cache (requests decoded together); max_queue: waiting requests
    beyond which `submit` raises `QueueFull`; max_num_steps: the deepest loop a request may ask
    for (the cache holds that many steps; default twice the model's default_depth with full
    sharing, the default_depth with other sharing, where it is the one depth served; ignored
    for a GPT); cache_sharing: `full` (exact), `shared`, `ring:M` or `last:M`; cache_length:
    columns of the shared timeline (at least the context length; default twice it), compacted
    when full; compile: the fast decode step under `torch.compile`, compiled by `start()` for
    every window at `compile_depth` (default: the model's default depth; see `warm_up`);
    threads: the process's intra-op threads from `start()` (default: unchanged).
    """

    def __init__(
        self,
        model,
        max_batch: int = 8,
        max_queue: int = 64,
        max_num_steps: int | None = None,
        cache_sharing: str | CacheSharing | None = "full",
        cache_length: int | None = None,
        compile: bool = False,
        threads: int | None = None,
        compile_depth: int | None = None,
    ) -> None:
        settings = self.settings = EngineSettings.resolve(
            model, max_batch, max_queue, max_num_steps, cache_sharing, threads, compile_depth
        )
        self.threads = threads
        self.compile_depth = compile_depth
        self.model = model
        config = self.config = model.config
        self.sharing, self.looped = settings.sharing, config.is_looped
        self.max_num_steps = settings.max_num_steps
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = next(model.parameters()).device
        # compacted rows hold < context_length columns: a timeline of twice the context is
        # compacted at most once per context_length decode steps
        if cache_length is None:
            cache_length = 2 * config.context_length
        if not isinstance(cache_length, int) or cache_length < config.context_length:
            raise ConfigError(
                f"cache_length must be an integer >= the context length "
                f"{config.context_length}, got {cache_length!r}"
            )
        self.cache = model.new_cache(
            max_batch, cache_length, self.max_num_steps or None, self.sharing
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiting: deque[Handle] = deque()
        self.decoder = ModelDecoder(model, compile)
        self.compile = compile
        self._active: list[_Sequence] = []  # row i holds _active[i]: packed at the front
        self._outbox = Outbox()  # the events of the iteration in progress (batcher thread)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._warm = False  # the compiled windows are compiled (`warm_up`)
        self._rate: deque[float] = deque()  # when each recent token was generated
        self._counters = dict(
            requests_total=0,
            requests_rejected_total=0,
            requests_finished_total=0,
            requests_cancelled_total=0,
            prompt_tokens_total=0,
            tokens_generated_total=0,
            loop_steps_total=0,
            decode_steps_total=0,
            compactions_total=0,
        )

    # ------------------------------------------------------------ requests

    def submit(self, request: GenerationRequest) -> Handle:
        """Check and queue `request` (thread-safe): a `PromptError` for a bad request, a
        `QueueFull` when `max_queue` requests are waiting."""
        self.settings.check(self.model, request)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                self._counters["requests_rejected_total"] += 1
                raise QueueFull(
                    f"the queue is full ({self.max_queue} requests waiting); retry later"
                )
            handle = Handle(next(self._ids), request, self)
            self._waiting.append(handle)
            self._counters["requests_total"] += 1
        self._wake.set()
        return handle

    def cancel_requested(self, handle: Handle) -> None:
        """`handle.cancel()` was called: the next iteration ends it."""
        self._wake.set()

    # ------------------------------------------------------------ the loop

    def step(self) -> bool:
        """One scheduling iteration (module docstring); False when there was nothing to do.
        Call it from one thread at a time (the background thread, or a test). Its events reach
        asyncio consumers together when it ends."""
        try:
            return self._iterate()
        finally:
            self._outbox.flush()

    @torch.no_grad()
    def _iterate(self) -> bool:
        cancelled = [s for s in self._active if s.handle.cancelled]
        for sequence in cancelled:
            self._finish(sequence, "cancelled")
        admitted = []
        with self._lock:
            for handle in [h for h in self._waiting if h.cancelled]:
                self._waiting.remove(handle)
                self._finish_waiting(handle, "cancelled")
                cancelled.append(handle)
            free = self.max_batch - len(self._active)
            while self._waiting and len(admitted) < free:
                admitted.append(self._waiting.popleft())
        if admitted:
            try:
                self._prefill(admitted)
            except Exception as error:
                for failed in admitted:
                    if failed.finish is None and not any(s.handle is failed for s in self._active):
                        self._finish_waiting(failed, "error", f"{type(error).__name__}: {error}")
                raise
        decoded = bool(self._active)
        if decoded:
            self._decode()
        return bool(cancelled or admitted or decoded)

    def run_until_idle(self, max_steps: int | None = None) -> None:
        """Step until nothing is waiting or active (tests and scripts without `start`)."""
        for _ in itertools.count() if max_steps is None else range(max_steps):
            if not self.step() and not self._waiting:
                return

    def start(self) -> None:
        """Run the loop in a background thread (daemon) until `stop()`."""
        if self._thread is not None:
            return
        if self.threads is not None:  # the intra-op pool is the process's
            torch.set_num_threads(self.threads)
        self.warm_up()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="parcae-batcher", daemon=True)
        self._thread.start()

    @torch.no_grad()
    def warm_up(self) -> None:
        """With `compile`, compile the fast decode step for every window a step runs (1, 2, 4,
        ..., max_batch rows, `_window`) at `compile_depth`, before any request: each compiles
        once per process (tens of seconds on a CPU; torch's compile cache makes a restart
        quicker), which would otherwise stall the requests that first need it. Each window is
        reported on stderr as it compiles. Another depth still compiles when first asked for.
        A no-op without compile, once done, or with rows in use. Called by `start()`."""
        if not self.compile or self._warm or self._active:
            return
        depth = self.compile_depth or self.config.default_depth
        full = self.sharing.kind == "full" and self.looped
        windows = sorted({self._window_of(rows) for rows in range(1, self.max_batch + 1)})
        for window in windows:
            began = time.monotonic()
            view = leading_rows(self.cache, window, depth if full else None)
            self.decoder.step(view, torch.zeros(window, dtype=torch.long, device=self.device))
            rows = "row" if window == 1 else "rows"
            print(
                f"parcae: compiled the decode step for {window} {rows} "
                f"({time.monotonic() - began:.0f} s; {windows.index(window) + 1}/{len(windows)})",
                file=sys.stderr,
                flush=True,
            )
        self.cache.reset()
        self._warm = True

    def stop(self) -> None:
        """Stop the background loop; every waiting or active request ends `cancelled`."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._end_all("cancelled")

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                worked = self.step()
            except Exception as error:  # noqa: BLE001 - reported to every request, loop goes on
                self._end_all("error", f"{type(error).__name__}: {error}")
                worked = False
            if not worked:
                self._wake.wait(0.5)

    # ------------------------------------------------------------ prefill and decode

    def _free_rows(self) -> None:
        """Hide whatever the rows past the active ones hold (a padding row of a compiled
        window marks its columns), before a compaction or an admission counts columns."""
        if len(self._active) < self.max_batch:
            self.cache.release(list(range(len(self._active), self.max_batch)))

    def _prefill(self, handles: list[Handle]) -> None:
        """Prefill the prompts of `handles` together (left-padded) and admit each into the next
        free row."""
        sequences = [
            _Sequence(
                handle,
                handle.request,
                handle.request.depth(self.model),
                new_generator(handle.request.sampling.seed, self.device),
                stop_ids=frozenset(handle.request.stop_token_ids),
            )
            for handle in handles
        ]
        prompts = [s.request.prompt_ids for s in sequences]
        self._counters["prompt_tokens_total"] += sum(len(p) for p in prompts)
        ids, valid = prepare_prompts(self.model, prompts)
        depth = max(s.depth for s in sequences)
        cache = self.model.new_cache(len(prompts), ids.shape[1], depth or None, self.sharing)
        params = [s.params for s in sequences]
        rule = RowExit.of(params, depth, self.config, self.device)
        logits, steps = self.decoder.prefill(cache, ids, valid, rule)
        tokens = sample_rows(logits, params, [s.generator for s in sequences])
        self._free_rows()
        for index, (sequence, token, row_steps) in enumerate(
            zip(sequences, tokens, steps.tolist())
        ):
            if isinstance(token, RuntimeError):
                self._finish(sequence, "error", error=f"sampling failed: {token}")
            elif not self._record(sequence, token, row_steps):
                sequence.row = len(self._active)
                self.cache.admit(sequence.row, cache, index)
                self._active.append(sequence)

    def _window(self) -> int:
        """Rows a decode step runs: the active ones (compiled: rounded up to a power of two)."""
        return self._window_of(len(self._active))

    def _window_of(self, active: int) -> int:
        if not self.compile:
            return active
        return min(1 << (active - 1).bit_length(), self.max_batch)

    def _decode(self) -> None:
        cache, sequences = self.cache, list(self._active)
        if cache.length + 1 > cache.max_length:
            self._free_rows()
            cache.compact()
            self._counters["compactions_total"] += 1
        rows, window = len(sequences), self._window()
        depth = max(s.depth for s in sequences)
        full = self.sharing.kind == "full" and self.looped
        # eager: attend over the columns the rows hold only; compiled: one shape for all steps
        columns = None if self.compile else cache.length + 1
        first = 0 if self.compile else first_live_column(cache, rows)
        view = leading_rows(cache, window, depth if full else None, columns, first)
        padding = [sequences[0].params.replace(adaptive=None)] * (window - rows)
        rule = RowExit.of([s.params for s in sequences] + padding, depth, self.config, self.device)
        tokens = torch.zeros(window, dtype=torch.long)
        tokens[:rows] = torch.tensor([s.pending for s in sequences])
        valid = torch.arange(window) < rows
        logits, steps = self.decoder.step(view, tokens.to(self.device), rule, valid.to(self.device))
        cache.length = first + view.length
        self._counters["decode_steps_total"] += 1
        sampled = sample_rows(
            logits[:rows], [s.params for s in sequences], [s.generator for s in sequences]
        )
        for sequence, token, row_steps in zip(sequences, sampled, steps[:rows].tolist()):
            if isinstance(token, RuntimeError):
                self._finish(sequence, "error", error=f"sampling failed: {token}")
            else:
                self._record(sequence, token, row_steps)

    def _record(self, sequence: _Sequence, token: int, steps: int) -> bool:
        """Count and send `token`; finish the request if it is done (True)."""
        sequence.generated += 1
        sequence.steps_total += steps
        self._counters["tokens_generated_total"] += 1
        self._counters["loop_steps_total"] += steps
        now = time.monotonic()
        with self._lock:
            self._rate.append(now)
            while self._rate[0] < now - RATE_WINDOW_S:
                self._rate.popleft()
        if token in sequence.stop_ids:
            self._finish(sequence, "stop", token)
            return True
        sequence.handle._put(TokenEvent(token, steps), self._outbox)
        sequence.pending = token
        if sequence.generated >= sequence.request.max_tokens:
            self._finish(sequence, "length")
            return True
        return False

    # ------------------------------------------------------------ endings

    def _finish(
        self,
        sequence: _Sequence,
        reason: str,
        stop_token: int | None = None,
        error: str | None = None,
    ) -> None:
        if sequence.row is not None:  # the last active row moves into the hole
            row, last = sequence.row, len(self._active) - 1
            if row != last:
                move_row(self.cache, last, row)
                self._active[row] = self._active[last]
                self._active[row].row = row
            else:
                self.cache.release([row])
            self._active.pop()
            sequence.row = None
        usage = Usage(
            len(sequence.request.prompt_ids),
            sequence.generated,
            sequence.steps_total / sequence.generated if sequence.generated else 0.0,
        )
        self._count_end(reason)
        sequence.handle._put(FinishEvent(reason, usage, stop_token, error), self._outbox)

    def _finish_waiting(self, handle: Handle, reason: str, error: str | None = None) -> None:
        self._count_end(reason)
        usage = Usage(len(handle.request.prompt_ids), 0, 0.0)
        handle._put(FinishEvent(reason, usage, None, error), self._outbox)

    def _count_end(self, reason: str) -> None:
        self._counters["requests_finished_total"] += 1
        if reason == "cancelled":
            self._counters["requests_cancelled_total"] += 1

    def _end_all(self, reason: str, error: str | None = None) -> None:
        """End every waiting and active request with `reason` and empty the cache."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for handle in waiting:
            self._finish_waiting(handle, reason, error)
        for sequence in list(self._active):
            self._finish(sequence, reason, error=error)
        self._outbox.flush()
        self.cache.reset()

    # ------------------------------------------------------------ metrics

    def stats(self) -> dict[str, float]:
        """Counters since construction and the current state: requests_total (accepted),
        requests_rejected_total (queue full), requests_finished_total,
        requests_cancelled_total, prompt_tokens_total, tokens_generated_total,
        loop_steps_total, decode_steps_total, compactions_total, queue_depth,
        active_batch_size, max_batch, max_queue, mean_loop_steps_per_token (over every
        generated token) and tokens_per_second (over the last 10 s)."""
        with self._lock:
            stats: dict[str, float] = dict(self._counters)
            stats["queue_depth"] = len(self._waiting)
            rate = list(self._rate)
        stats["active_batch_size"] = len(self._active)
        stats["max_batch"], stats["max_queue"] = self.max_batch, self.max_queue
        generated = stats["tokens_generated_total"]
        stats["mean_loop_steps_per_token"] = (
            stats["loop_steps_total"] / generated if generated else 0.0
        )
        now = time.monotonic()
        recent = [t for t in rate if t >= now - RATE_WINDOW_S]
        span = now - recent[0] if recent else 0.0
        stats["tokens_per_second"] = len(recent) / span if span > 0 else 0.0
        return stats
