"""The OpenAI-compatible HTTP server (FastAPI) in front of a serving engine (`EngineProcess`, or
a `ContinuousBatcher` on a thread).

Endpoints:

- `GET /v1/models` (and `/v1/models/{id}`): the one model served, with its context length and
  loop depths;
- `POST /v1/completions`, `POST /v1/chat/completions`: OpenAI's request and response shapes
  (`parcae.serve.protocol` lists the fields and the error statuses); `stream: true` answers
  Server-Sent Events in OpenAI's chunk format (`data: {...}` per chunk, then `data: [DONE]`),
  the last chunk carrying `finish_reason` and `usage`. `usage` has `prompt_tokens`,
  `completion_tokens`, `total_tokens` and `loop_steps` (mean loop steps per generated token);
- `GET /health`: `{"status": "ok", ...}`;
- `GET /metrics`: Prometheus text (requests, tokens, tokens/s, queue depth, active batch size,
  mean loop steps per token, HTTP responses by status);
- `GET /`: the chat page (`static/`).

A client that disconnects (mid-body, mid-stream or while waiting for a whole completion)
cancels its request, which frees its row at the engine's next step; it is logged in one line
and counted as `disconnects` (status 499), never as an error. Request bodies are parsed and
tokenised in a worker thread, so a long prompt never stalls the event loop. The limits on
clients (read timeout, connection cap, request time limit, API key, CORS) are
`parcae.serve.guard`'s. Every error is OpenAI's JSON error
body: `APIError`s, Starlette's HTTP errors (404 unknown path, 405) and validation errors keep
their status; anything unexpected is a 500 with a generic message (the exception is logged,
never sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from parcae.data.chat_template import ChatTemplate
from parcae.errors import PromptError
from parcae.serve.batcher import Engine, FinishEvent, QueueFull, TokenEvent
from parcae.serve.detokenize import TextAssembler
from parcae.serve.engine_process import EngineStopped
from parcae.serve.guard import RequireApiKey, ServerLimits
from parcae.serve.metrics import CountResponses, metrics_text
from parcae.serve.protocol import (
    MAX_BODY_BYTES,
    APIError,
    Parsed,
    decode_json,
    error_body,
    from_prompt_error,
    parse_chat,
    parse_completion,
)

logger = logging.getLogger("parcae.serve")
STATIC_DIR = Path(str(resources.files("parcae.serve") / "static"))
DRAIN_FACTOR = 8  # a body over the limit is read (and dropped) up to this many limits
DISCONNECTED = APIError(499, "the client disconnected", None, "client_disconnected")


@dataclass
class ServingState:
    """What the app serves: the model, its tokenizer (or None), the engine and the defaults."""

    model: object
    tokenizer: object
    batcher: Engine
    name: str
    template: ChatTemplate = field(default_factory=ChatTemplate)
    aliases: tuple[str, ...] = ()
    num_steps: int | None = None
    adaptive_eps: float | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    limits: ServerLimits = field(default_factory=ServerLimits)
    created: int = field(default_factory=lambda: int(time.time()))
    responses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count

    @property
    def model_ids(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def max_num_steps(self) -> int:
        return self.batcher.max_num_steps

    @property
    def default_depth(self) -> int:
        config = self.model.config
        if config.default_depth is None:
            return 0
        return self.num_steps or config.default_depth


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class EventStream(StreamingResponse):
    """Server-Sent Events that stop as soon as the client disconnects: the stream is cancelled
    (whatever ASGI version the server speaks), so the generator's cleanup cancels the request."""

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def read_body(request: Request, limit: int) -> dict:
    """The JSON object of the body: 413 over `limit` bytes (by Content-Length, or by the bytes
    read), 400 for anything that is not a JSON object."""
    too_large = APIError(
        413, f"the request body is over the limit of {limit} bytes", None, "request_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "Content-Length must be a number of bytes", None, "invalid_header")
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > DRAIN_FACTOR * limit:
                break  # stop reading: the connection is closed after the answer
    except ClientDisconnect:
        raise DISCONNECTED from None
    if size > limit:
        raise too_large
    return decode_json(b"".join(chunks))


def _usage(prompt_tokens: int, completion_tokens: int, loop_steps: float) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "loop_steps": round(loop_steps, 4),
    }


class Generation:
    """One request's run: its events turned into text, its finish reason and usage."""

    def __init__(self, state: ServingState, parsed: Parsed, chat: bool) -> None:
        self.state, self.parsed, self.chat = state, parsed, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.assembler = TextAssembler(state.tokenizer, parsed.stops)
        self.steps: list[int] = []
        self.finish: FinishEvent | None = None
        self.finish_reason: str | None = None
        self.timed_out = False
        try:
            self.handle = state.batcher.submit(parsed.request)
        except QueueFull as error:
            retry = max(1, math.ceil(error.retry_after))
            raise APIError(
                429, str(error), None, "queue_full", headers={"Retry-After": str(retry)}
            ) from None
        except PromptError as error:
            raise from_prompt_error(error) from None
        except EngineStopped as error:
            raise APIError(503, str(error), None, "engine_stopped") from None
        self.deadline = time.monotonic() + state.limits.request_timeout

    async def deltas(self):
        """The text as it becomes final (strings, one per batch of events: the tokens that
        arrived together are sent together), until the request ends or its time limit passes
        (then `timed_out`: the engine may be busy, so the wait itself is bounded)."""
        left = self.deadline - time.monotonic()
        try:
            async with aclosing(self.handle.batches_async(left)) as batches:
                async for batch in batches:
                    text = "".join(self._take(event) for event in batch if not self.done)
                    if text:
                        yield text
                    if self.done:
                        return
        except TimeoutError:
            self.timed_out = True
            self.state.limits.counters["request_timeouts"] += 1
        finally:
            if not self.handle.done:
                self.handle.cancel()

    @property
    def done(self) -> bool:
        """Whether the request has ended: a stop sequence, or the engine's finish event."""
        return self.finish is not None or self.assembler.stopped

    def _take(self, event: TokenEvent | FinishEvent) -> str:
        """The final text that `event` adds; records its loop steps or the finish."""
        if isinstance(event, TokenEvent):
            self.steps.append(event.loop_steps)
            text = self.assembler.feed(event.token_id)
            if self.assembler.stopped:  # a stop sequence: the request ends here
                self.finish_reason = "stop"
            return text
        self.finish = event
        self.finish_reason = {"stop": "stop", "length": "length"}.get(event.finish_reason)
        if event.finish_reason == "error":
            logger.error("request %s failed in the engine: %s", self.id, event.error)
        return self.assembler.finish()

    def usage(self) -> dict:
        prompt = len(self.parsed.request.prompt_ids)
        if self.finish is not None and self.finish_reason is not None:
            usage = self.finish.usage
            return _usage(prompt, usage.completion_tokens, usage.mean_loop_steps)
        steps = self.steps
        return _usage(prompt, len(steps), sum(steps) / len(steps) if steps else 0.0)

    def failure(self) -> APIError:
        """The error of a request that ended neither by stop nor by length."""
        if self.timed_out:
            limit = self.state.limits.request_timeout
            return APIError(
                504, f"the request ran past the time limit of {limit:g} s", None, "timeout"
            )
        if self.finish is not None and self.finish.finish_reason == "cancelled":
            return APIError(503, "the server is shutting down; the request was cancelled")
        return APIError(500, "the engine failed while generating; see the server's log")

    def envelope(self, choice: dict, chunk: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + ".chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.state.name,
            "choices": [{"index": 0, **choice}],
        }

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False):
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"text": text or "", "finish_reason": finish, "logprobs": None}
        return self.envelope(choice, chunk=True)


def _sse(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _stream(generation: Generation):
    if generation.chat:
        yield _sse(generation.chunk(role=True))
    async for text in generation.deltas():
        yield _sse(generation.chunk(text))
    if generation.finish_reason is None:
        error = generation.failure()
        yield _sse(error.body())
    else:
        final = generation.chunk(finish=generation.finish_reason)
        final["usage"] = generation.usage()
        yield _sse(final)
    yield "data: [DONE]\n\n"


async def _complete(generation: Generation, request: Request) -> dict:
    async def collect() -> None:
        async for _ in generation.deltas():
            pass

    collector = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (collector, watcher):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    if not collector.done() or collector.cancelled() or generation.finish_reason is None:
        if watcher.done() and not watcher.cancelled():
            raise DISCONNECTED
        raise generation.failure()
    text = generation.assembler.text
    if generation.chat:
        choice = {
            "message": {"role": "assistant", "content": text},
            "finish_reason": generation.finish_reason,
            "logprobs": None,
        }
    else:
        choice = {"text": text, "finish_reason": generation.finish_reason, "logprobs": None}
    response = generation.envelope(choice, chunk=False)
    response["usage"] = generation.usage()
    return response


def create_app(state: ServingState) -> FastAPI:
    """The ASGI app; its lifespan starts and stops the engine's loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        try:
            yield
        finally:
            state.batcher.stop()

    app = FastAPI(title="parcae", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serving = state

    limits = state.limits  # middleware, innermost first: key, CORS (preflights need no key), count
    if limits.api_key is not None:
        app.add_middleware(RequireApiKey, api_key=limits.api_key)
    if limits.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(limits.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(CountResponses, counts=state.responses)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        if error is DISCONNECTED:
            limits.counters["disconnects"] += 1
            logger.info("client disconnected: %s %s", request.method, request.url.path)
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = error_body(
            str(error.detail),
            "invalid_request_error" if error.status_code < 500 else "server_error",
            None,
            codes.get(error.status_code),
        )
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        body = error_body(
            first.get("msg", "invalid request"), "invalid_request_error", param, "invalid_type"
        )
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        body = error_body("internal server error", "server_error", None, None)
        return JSONResponse(body, status_code=500)

    def model_card() -> dict:
        config = state.model.config
        return {
            "id": state.name,
            "object": "model",
            "created": state.created,
            "owned_by": "parcae",
            "context_length": config.context_length,
            "looped": config.is_looped,
            "num_steps": state.default_depth,
            "max_num_steps": state.max_num_steps,
        }

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in state.model_ids:
            raise APIError(
                404, f"the model {model_id!r} does not exist", "model", "model_not_found"
            )
        return model_card()

    async def generate(request: Request, chat: bool):
        body = await read_body(request, state.max_body_bytes)
        if chat:  # a worker thread: tokenising a long prompt must not stall the event loop
            parsed = await anyio.to_thread.run_sync(parse_chat, body, state, state.template)
        else:
            parsed = await anyio.to_thread.run_sync(parse_completion, body, state)
        generation = Generation(state, parsed, chat)
        if parsed.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return EventStream(_stream(generation), headers=headers)
        return JSONResponse(await _complete(generation, request))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.get("/health")
    async def health():
        stats = state.batcher.stats()
        return {
            "status": "ok",
            "model": state.name,
            "queue_depth": stats["queue_depth"],
            "active_batch_size": stats["active_batch_size"],
        }

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(
            metrics_text(state), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
