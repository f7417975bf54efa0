"""Serving: `parcae serve`, an OpenAI-compatible server over a continuous-batching engine.

The engine (importable without the `serve` extra):

- `requests`: `GenerationRequest`, one completion's settings, and its checks (`PromptError`);
- `batcher`: `ContinuousBatcher`, continuous batching over the one `KVCache`: requests join
  between decode steps after their prefill and leave as soon as they finish, each `Handle`
  streams its tokens then a `FinishEvent` (see the module's docstring for what a step shares);
- `engine_process`: `EngineProcess`, the same batcher in a child process (what `parcae serve`
  runs: the decode loop and the HTTP event loop then share no interpreter lock).

The server (FastAPI + uvicorn, `pip install 'parcae[serve]'`):

- `protocol`: request bodies read and checked, and the OpenAI-style error table;
- `parcae.data.chat_template` (used here): messages to a prompt (the tokenizer's template,
  else a plain one);
- `detokenize`: text built token by token, with stop sequences matched on it;
- `app`: the FastAPI app (endpoints, SSE streaming, errors, `/metrics`, the page at `/`);
- `server`: loading the model and running uvicorn; `commands`: the `parcae serve` command;
- `static/`: the chat page (HTML, JS, CSS; no build step, no CDN).
"""

from parcae.serve.batcher import (
    FINISH_REASONS,
    Completion,
    ContinuousBatcher,
    FinishEvent,
    Handle,
    QueueFull,
    RowExit,
    TokenEvent,
    Usage,
)
from parcae.serve.engine_process import EngineProcess, EngineStopped
from parcae.serve.requests import GenerationRequest

__all__ = [
    "FINISH_REASONS",
    "Completion",
    "ContinuousBatcher",
    "EngineProcess",
    "EngineStopped",
    "FinishEvent",
    "GenerationRequest",
    "Handle",
    "QueueFull",
    "RowExit",
    "TokenEvent",
    "Usage",
]
