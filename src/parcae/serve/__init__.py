"""Serving: the engine under an OpenAI-compatible server.

- `requests`: `GenerationRequest`, one completion's settings, and its checks (`PromptError`);
- `batcher`: `ContinuousBatcher`, continuous batching over the one `KVCache`: requests join
  between decode steps after their prefill and leave as soon as they finish, each `Handle`
  streams its tokens then a `FinishEvent` (see the module's docstring for what a step shares).
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
from parcae.serve.requests import GenerationRequest

__all__ = [
    "FINISH_REASONS",
    "Completion",
    "ContinuousBatcher",
    "FinishEvent",
    "GenerationRequest",
    "Handle",
    "QueueFull",
    "RowExit",
    "TokenEvent",
    "Usage",
]
