"""The serving engine in a process of its own, so that the decode loop and the HTTP event loop
do not share one interpreter lock.

In one process, `ContinuousBatcher`'s thread and uvicorn's event loop take turns on the GIL: a
decode step of a small model is thousands of short operator calls, and between any two the
event loop may hold the interpreter to parse a request or write a stream chunk (and the other
way round). Under load neither runs at its speed (docs/PERFORMANCE.md). Here the batcher runs
in a child process and the two exchange messages over pipes, as vLLM's engine core does.

`EngineProcess(model, max_batch, max_queue, max_num_steps, cache_sharing, compile, threads,
compile_depth)` serves as the batcher does: `submit(request) -> Handle` (the same checks,
`EngineSettings`, and the same `Handle`: thread-side or asyncio consumers, `cancel()`),
`stats()`, `start()`, `stop()`.

- `start()` spawns the child (`torch.multiprocessing`, spawn) and waits until it is ready. The
  model reaches it through shared memory (its tensors are moved there, not copied); the child
  runs `threads` intra-op threads. The child's main thread reads what the parent sends (a
  request, a cancellation, stop) and hands it to a `ContinuousBatcher` running its own loop;
  the events of each scheduling iteration come back in one message.
- A thread here reads those messages and gives each event to its request's `Handle`, through
  the same outbox as the batcher's (one `call_soon_threadsafe` per event loop per message).
- The queue bound is kept here: a request is refused (`QueueFull`) when `max_batch + max_queue`
  requests are in flight (submitted, not finished), which is when the batcher would hold
  `max_queue` waiting with every row busy.
- `stats()` asks the child for its batcher's (a round trip), and adds this side's rejections.
- If the child dies, every request in flight ends with finish_reason `error` and `submit`
  raises `EngineStopped`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import queue
import signal
import threading
import time
from typing import Any

import torch

from parcae.errors import ParcaeError
from parcae.serve.batcher import (
    ContinuousBatcher,
    Engine,
    EngineSettings,
    Event,
    FinishEvent,
    Handle,
    Outbox,
    QueueFull,
    Usage,
)
from parcae.serve.requests import GenerationRequest

STATS_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 3600.0  # importing torch, building the cache; with compile, every window


class EngineStopped(ParcaeError):
    """The engine process is not running (not started, stopped, or it died)."""


class EngineProcess(Engine):
    """A `ContinuousBatcher` in a child process (module docstring); the arguments are the
    batcher's, and threads: the engine's intra-op threads (default: this process's less one,
    at least one, so that the HTTP loop keeps a core; on a small model more threads under load
    slow each step, see docs/PERFORMANCE.md)."""

    def __init__(
        self,
        model,
        max_batch: int = 8,
        max_queue: int = 64,
        max_num_steps: int | None = None,
        cache_sharing: str | None = "full",
        compile: bool = False,
        threads: int | None = None,
        compile_depth: int | None = None,
    ) -> None:
        self.settings = EngineSettings.resolve(
            model, max_batch, max_queue, max_num_steps, cache_sharing, threads, compile_depth
        )
        self.threads = threads or max(1, torch.get_num_threads() - 1)
        self.model = model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_num_steps = self.settings.max_num_steps
        # the child queues whatever this side admits: at most max_batch + max_queue in flight
        self._options = dict(
            max_batch=max_batch,
            max_queue=max_batch + max_queue,
            max_num_steps=self.max_num_steps or None,
            cache_sharing=str(self.settings.sharing),
            compile=compile,
            compile_depth=compile_depth,
        )
        self._lock = threading.Lock()  # the requests in flight and the pipe's send end
        self._handles: dict[int, Handle] = {}
        self._ids = itertools.count()
        self._rejected = 0
        self._stats: dict[str, float] = {}  # the engine's last answer to `stats`
        self._stats_lock = threading.Lock()  # one question at a time
        self._stats_replies: queue.Queue[dict[str, float]] = queue.Queue()
        self._process = None
        self._requests = None  # the pipe to the child
        self._reader: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Spawn the engine and wait until it serves (`EngineStopped` if it fails to)."""
        if self._process is not None:
            return
        shipped = copy.copy(self.model)  # the same modules and tensors, without
        shipped.__dict__.pop("_decode_steps", None)  # this process's decode steps and caches
        context = torch.multiprocessing.get_context("spawn")
        requests_in, requests_out = context.Pipe(duplex=False)
        events_in, events_out = context.Pipe(duplex=False)
        process = context.Process(
            target=_engine_main,
            args=(shipped, self._options, self.threads, requests_in, events_out),
            name="parcae-engine",
            daemon=True,
        )
        try:
            with _sigint_blocked():  # until the child ignores it (`_engine_main`)
                process.start()  # pickles the model: its tensors move to shared memory
        except Exception as error:
            raise EngineStopped(
                f"the model cannot be sent to an engine process ({type(error).__name__}: "
                f"{error}); serve it with the engine on a thread (--engine thread)"
            ) from None
        requests_in.close()
        events_out.close()
        deadline = time.monotonic() + timeout
        while not events_in.poll(0.1):
            if not process.is_alive() or time.monotonic() > deadline:
                process.kill()
                process.join()
                raise EngineStopped(
                    f"the engine process did not start (exit code {process.exitcode})"
                )
        try:
            kind, detail = events_in.recv()
        except EOFError:
            process.join()
            kind, detail = "failed", f"exit code {process.exitcode}"
        if kind != "ready":
            process.join(5)
            raise EngineStopped(f"the engine process did not start: {detail}")
        self._stats = detail
        self._process, self._requests, self._stopping = process, requests_out, False
        self._reader = threading.Thread(
            target=self._read, args=(events_in,), name="parcae-engine-events", daemon=True
        )
        self._reader.start()

    def stop(self) -> None:
        """Stop the engine; every request in flight ends `cancelled`."""
        if self._process is None:
            return
        self._stopping = True
        try:
            self._send(("stop",))
        except EngineStopped:
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._reader.join(10)
        self._process = self._requests = self._reader = None
        self._end_all("cancelled")

    # ------------------------------------------------------------ requests

    def submit(self, request: GenerationRequest) -> Handle:
        """Check and send `request`: a `PromptError` for a bad request, `QueueFull` when
        `max_batch + max_queue` requests are in flight, `EngineStopped` when the engine is not
        running."""
        self.settings.check(self.model, request)
        with self._lock:
            if len(self._handles) >= self.max_batch + self.max_queue:
                self._rejected += 1
                raise QueueFull(
                    f"the queue is full ({self.max_queue} requests waiting); retry later"
                )
            handle = Handle(next(self._ids), request, self)
            self._send_locked(("submit", handle.id, request))
            self._handles[handle.id] = handle
        return handle

    def cancel_requested(self, handle: Handle) -> None:
        """`handle.cancel()` was called: the engine ends it at its next iteration."""
        try:
            self._send(("cancel", handle.id))
        except EngineStopped:
            pass  # the engine is gone: the request ends with it

    def stats(self) -> dict[str, float]:
        """`ContinuousBatcher.stats()`, asked of the engine (a round trip of a millisecond or
        so; its last answer once it has stopped), with the requests this side refused in
        requests_rejected_total."""
        with self._stats_lock:
            while not self._stats_replies.empty():  # a late answer to an earlier question
                self._stats_replies.get_nowait()
            try:
                self._send(("stats",))
                self._stats = self._stats_replies.get(timeout=STATS_TIMEOUT_S)
            except (EngineStopped, queue.Empty):
                pass  # not running (or not answering): the last answer
            stats = dict(self._stats)
        with self._lock:
            stats["requests_rejected_total"] = (
                stats.get("requests_rejected_total", 0) + self._rejected
            )
        stats["max_queue"] = self.max_queue
        return stats

    # ------------------------------------------------------------ messages

    def _send(self, message: tuple) -> None:
        with self._lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple) -> None:
        if self._requests is None:
            raise EngineStopped("the engine is not running")
        try:
            self._requests.send(message)
        except (OSError, ValueError) as error:
            raise EngineStopped(f"the engine process is gone: {error}") from None

    def _read(self, events) -> None:
        """The reader thread: each message's events to their handles, until the child ends."""
        outbox = Outbox()
        while True:
            try:
                kind, payload = events.recv()
            except (EOFError, OSError):
                break
            if kind == "stats":
                self._stats_replies.put(payload)
                continue
            items = payload
            with self._lock:
                handles = [self._handles.get(request_id) for request_id, _ in items]
                for request_id, event in items:
                    if isinstance(event, FinishEvent):
                        self._handles.pop(request_id, None)
            for handle, (_, event) in zip(handles, items):
                if handle is not None:
                    handle._put(event, outbox)
            outbox.flush()
        events.close()
        if not self._stopping:  # the child died: nothing will end these requests but us
            with self._lock:
                self._requests = None
            process = self._process
            process.join(5)
            self._end_all("error", f"the engine process exited (exit code {process.exitcode})")

    def _end_all(self, reason: str, error: str | None = None) -> None:
        """End every request in flight here (the engine can no longer)."""
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        outbox = Outbox()
        for handle in handles:
            steps = handle._loop_steps
            usage = Usage(
                len(handle.request.prompt_ids),
                len(steps),
                sum(steps) / len(steps) if steps else 0.0,
            )
            handle._put(FinishEvent(reason, usage, None, error), outbox)
        outbox.flush()


class _PipeDestination:
    """The child's messages to the parent: ("events", [(request id, event), ...]) for each
    batch, ("stats", dict) for each question. `attach` routes a new request's events here."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.handles: dict[int, Handle] = {}  # the parent's request id -> the child's handle
        self.lock = threading.Lock()  # the batcher's thread and the main thread both send

    def attach(self, handle: Handle, request_id: int) -> None:
        """Route `handle`'s events here: those already produced first (no later one can be
        sent before them: sending waits for the lock)."""
        with self.lock:
            self.handles[request_id] = handle
            early = handle._redirect(self, request_id)
            if early:
                self._send_events([(handle, request_id, event) for event in early])

    def post(self, items: list[tuple[Handle, Any, Event]]) -> None:
        with self.lock:
            self._send_events(items)

    def send(self, message: tuple) -> None:
        with self.lock:
            self.connection.send(message)

    def _send_events(self, items: list[tuple[Handle, Any, Event]]) -> None:
        for _, request_id, event in items:
            if isinstance(event, FinishEvent):
                self.handles.pop(request_id, None)
        try:
            self.connection.send(
                ("events", [(request_id, event) for _, request_id, event in items])
            )
        except (OSError, ValueError):  # the parent is gone: nobody is listening
            for handle, _, _ in items:
                handle.cancel()


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread meanwhile, and so in a child started meanwhile (a signal
    mask survives fork and exec): a Ctrl-C to the process group while the child imports torch
    waits until it ignores SIGINT, rather than killing it with a traceback. POSIX; elsewhere
    nothing is blocked."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _engine_main(model, options: dict, threads: int, requests, events) -> None:
    """The child: a `ContinuousBatcher` on its own thread, fed from `requests` by this one.
    Ctrl-C in a terminal signals it too: it ignores SIGINT and ends when the parent says stop
    (or goes: the pipe closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent (`_sigint_blocked`)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        batcher = ContinuousBatcher(model, **options, threads=threads)
    except Exception as error:  # noqa: BLE001 - reported to the parent in one line
        events.send(("failed", f"{type(error).__name__}: {error}"))
        return
    destination = _PipeDestination(events)
    batcher.start()
    events.send(("ready", batcher.stats()))
    while True:
        try:
            message = requests.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        kind = message[0]
        if kind == "stop":
            break
        if kind == "submit":
            _, request_id, request = message
            try:
                handle = batcher.submit(request)
            except ParcaeError as error:  # the parent checked it: not expected
                usage = Usage(len(request.prompt_ids), 0, 0.0)
                destination.send(
                    ("events", [(request_id, FinishEvent("error", usage, None, str(error)))])
                )
                continue
            destination.attach(handle, request_id)
        elif kind == "cancel":
            with destination.lock:
                handle = destination.handles.get(message[1])
            if handle is not None:
                handle.cancel()
        elif kind == "stats":
            destination.send(("stats", batcher.stats()))
    batcher.stop()
