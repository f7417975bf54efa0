"""The OpenAI request bodies as the server reads them, and its JSON errors (no web framework here).

`parse_completion(body, server)` and `parse_chat(body, server)` turn a decoded JSON body into a
`Parsed` request (a `GenerationRequest` and the serving options around it), or raise `APIError`:

- 400 `invalid_json`: a body that is not JSON, not a JSON object, nested too deeply for the
  parser, or holding a lone surrogate (`"\ud800"`);
- 400 `missing_required_parameter`: `prompt` / `messages` missing (or null);
- 422 `invalid_type`: a field of the wrong JSON type (`temperature: "hot"`);
- 400 `invalid_value`: a value out of range: `max_tokens` <= 0, a sampling value that
  `SamplingParams` refuses (`parcae.infer.sampling`: `temperature` neither 0 nor >= 1e-6,
  `top_k` < 1, `top_p` outside (0, 1], `min_p` outside [0, 1], `seed` outside [0, 2**64),
  `adaptive_eps` < 0, an unknown `adaptive_criterion`; the message names the body field),
  `num_steps` outside [1, the server's maximum] (at most 1024), `n` != 1, more than 4 `stop`
  sequences, an empty prompt, a token id outside the vocabulary;
- 400 `context_length_exceeded`: a prompt that does not fit the context (`param` `prompt` or
  `messages`), or `max_tokens` beyond the room the prompt leaves (`param` `max_tokens`);
- 404 `model_not_found`: a `model` other than the one served;
- 413 `request_too_large`: a body over the size limit (1 MB), by Content-Length or by the bytes
  read;
- 429 `queue_full`: the engine's queue is full (with a `Retry-After` header).

So a value of the right type but out of range is 400, a value of the wrong type 422. Every error
body is `{"error": {"message", "type", "param", "code"}}` (type `invalid_request_error`, or
`rate_limit_error` for 429 and `server_error` for 5xx).

Fields read: `model` (optional; if given, the served model's id), `prompt` (completions: a
string, a list of token ids, or a list of one string), `messages` (chat: a list of
`{"role", "content"}`), `max_tokens` (chat also `max_completion_tokens`; default 16 for a
completion, the rest of the context for a chat), `temperature` (default 1; 0 is greedy),
`top_k`, `top_p`, `min_p`, `stop` (a string or up to 4 strings, matched on the decoded text),
`seed`, `stream`, `stream_options` (accepted; usage always rides on the last chunk), `n` (1
only), and the extra fields `num_steps` (loop depth; default the server's `--num-steps`),
`adaptive_eps` (default the server's `--adaptive`) and `adaptive_criterion` (`residual`, the
default, or `kl`). Other fields are ignored. A string prompt is encoded with BOS first
(as `parcae generate` does); a list of token ids is used as it is. Generation ends at EOS
(finish_reason `stop`), at a stop sequence (`stop`) or after `max_tokens` (`length`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from parcae.errors import PromptError
from parcae.infer.sampling import SamplingError, SamplingParams
from parcae.model.base import MAX_NUM_STEPS
from parcae.serve.requests import GenerationRequest
from parcae.values import is_number

MAX_BODY_BYTES = 1 << 20
MAX_STOP_SEQUENCES = 4
DEFAULT_COMPLETION_TOKENS = 16
BODY_NAMES = {  # SamplingParams field -> its body field (max_new_tokens: or max_completion_tokens)
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "num_steps": "num_steps",
    "adaptive": "adaptive_eps",
    "adaptive_criterion": "adaptive_criterion",
}
FIELDS = tuple(BODY_NAMES.values())


class APIError(Exception):
    """An error answered as OpenAI's JSON error body with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status == 429:
            return "rate_limit_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_prompt_error(error: PromptError) -> APIError:
    """A `PromptError` of the engine's checks as a 400, with `param` where the message names it."""
    message = str(error)
    param = next((name for name in FIELDS if message.startswith(name)), None)
    if message.startswith(("prompt", "token ids", "input_ids")):
        param = "prompt"
    code = "context_length_exceeded" if "context" in message else "invalid_value"
    return APIError(400, message, param, code)


def decode_json(raw: bytes):
    """The JSON object of a request body (APIError 400 otherwise)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise APIError(400, f"the body is not valid JSON: {error}", None, "invalid_json") from None
    except RecursionError:
        raise APIError(400, "the body is nested too deeply", None, "invalid_json") from None
    try:  # JSON escapes can spell lone surrogates ("\ud800"), which no tokenizer encodes
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as error:
        message = f"the body holds text that is not valid Unicode ({error.reason})"
        raise APIError(400, message, None, "invalid_json") from None
    except RecursionError:
        raise APIError(400, "the body is nested too deeply", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(
            400, f"the body must be a JSON object, got {_json_type(body)}", None, "invalid_json"
        )
    return body


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(body: dict, name: str, check, what: str):
    """body[name] (None when absent or null); APIError 422 when it is not `what`."""
    value = body.get(name)
    if value is None:
        return None
    if not check(value):
        raise APIError(422, f"{name} must be {what}, got {_json_type(value)}", name, "invalid_type")
    return value


SAMPLING_TYPES = {  # body field -> (its JSON type test, what it must be); values: SamplingParams
    "temperature": (is_number, "a number"),
    "top_k": (_is_int, "an integer"),
    "top_p": (is_number, "a number"),
    "min_p": (is_number, "a number"),
    "seed": (_is_int, "an integer"),
    "num_steps": (_is_int, "an integer"),
    "adaptive_eps": (is_number, "a number"),
    "adaptive_criterion": (lambda v: isinstance(v, str), "a string"),
}


def _invalid(name: str, message: str) -> APIError:
    return APIError(400, f"{name} {message}", name, "invalid_value")


@dataclass
class Parsed:
    """A checked request: the engine's part and the server's (stream, stop sequences)."""

    request: GenerationRequest
    stream: bool = False
    stops: list[str] = field(default_factory=list)


class Limits(Protocol):
    """What a parse needs to know of the server (`serve.app.ServingState` has it)."""

    model_ids: tuple[str, ...]
    context_length: int
    vocab_size: int
    max_num_steps: int
    num_steps: int | None
    adaptive_eps: float | None
    tokenizer: object


def check_model(body: dict, server: Limits) -> None:
    model = _typed(body, "model", lambda v: isinstance(v, str), "a string")
    if model is not None and model not in server.model_ids:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {server.model_ids[0]!r}",
            "model",
            "model_not_found",
        )


def _options(body: dict, server: Limits, prompt_ids: list[int], default_tokens: int) -> Parsed:
    """Every field but the prompt: types here (422), values by `SamplingParams` (400, restated
    under the body's names), then the server's own rules (context room, its depth limit)."""
    context = server.context_length
    n = _typed(body, "n", _is_int, "an integer")
    if n is not None and n != 1:
        raise _invalid("n", f"must be 1 (one choice per request), got {n}")
    stream = _typed(body, "stream", lambda v: isinstance(v, bool), "a boolean") or False
    _typed(body, "stream_options", lambda v: isinstance(v, dict), "an object")
    tokens_field = "max_tokens"
    max_tokens = _typed(body, "max_tokens", _is_int, "an integer")
    if max_tokens is None and "max_completion_tokens" in body:
        tokens_field = "max_completion_tokens"
        max_tokens = _typed(body, tokens_field, _is_int, "an integer")
    values = {
        name: _typed(body, name, check, what) for name, (check, what) in SAMPLING_TYPES.items()
    }
    stop = _typed(
        body,
        "stop",
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        ),
        "a string or an array of strings",
    )

    if max_tokens is not None and max_tokens < 1:
        raise _invalid(tokens_field, f"must be at least 1, got {max_tokens}")
    room = context - len(prompt_ids)
    if max_tokens is None:
        max_tokens = min(default_tokens, room)
    elif max_tokens > room:
        raise APIError(
            400,
            f"{tokens_field} is {max_tokens}, but the prompt has {len(prompt_ids)} tokens and "
            f"the model's context holds {context}: at most {room} new tokens fit",
            tokens_field,
            "context_length_exceeded",
        )
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _invalid("stop", f"takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}")
    if values["num_steps"] is None:
        values["num_steps"] = server.num_steps
    if values["adaptive_eps"] is None:
        values["adaptive_eps"] = server.adaptive_eps
    values["temperature"] = 1.0 if values["temperature"] is None else values["temperature"]
    values["adaptive_criterion"] = values["adaptive_criterion"] or "residual"
    names = {**BODY_NAMES, "max_new_tokens": tokens_field}
    spec = {field: values[name] for field, name in BODY_NAMES.items() if name in values}
    try:
        sampling = SamplingParams(max_new_tokens=max_tokens, stop=[s for s in stops if s], **spec)
    except SamplingError as error:
        name = names[error.field]
        raise APIError(400, str(error.restated(name)), name, "invalid_value") from None
    limit = min(server.max_num_steps or MAX_NUM_STEPS, MAX_NUM_STEPS)
    if sampling.num_steps is not None and sampling.num_steps > limit:
        raise _invalid(
            "num_steps", f"must be in [1, {limit}] on this server, got {sampling.num_steps}"
        )
    tokenizer = server.tokenizer
    request = GenerationRequest(
        prompt_ids,
        sampling,
        stop_token_ids=frozenset() if tokenizer is None else frozenset([tokenizer.eos_id]),
    )
    return Parsed(request, stream, list(sampling.stop))


def _check_prompt_ids(ids: list[int], server: Limits, param: str) -> list[int]:
    if not ids:
        raise _invalid(param, "is empty: give at least one token")
    bad = [token for token in ids if not 0 <= token < server.vocab_size]
    if bad:
        raise _invalid(
            param, f"has token id {bad[0]} outside the vocabulary [0, {server.vocab_size})"
        )
    if len(ids) >= server.context_length:
        raise APIError(
            400,
            f"{param} has {len(ids)} tokens; the model's context holds {server.context_length}, "
            f"so prompts must be shorter",
            param,
            "context_length_exceeded",
        )
    return ids


def parse_completion(body: dict, server: Limits) -> Parsed:
    check_model(body, server)
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "prompt is required", "prompt", "missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        if server.tokenizer is None:
            raise _invalid(
                "prompt", "is text, but this model has no tokenizer: send a list of token ids"
            )
        if not prompt:
            raise _invalid("prompt", "is empty: give some text to continue")
        ids = server.tokenizer.encode_prompt(prompt)
    elif isinstance(prompt, list) and all(_is_int(token) for token in prompt):
        ids = list(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, (str, list)) for p in prompt):
        raise _invalid("prompt", f"holds {len(prompt)} prompts; send one prompt per request")
    else:
        raise APIError(
            422,
            f"prompt must be a string or an array of token ids, got {_json_type(prompt)}",
            "prompt",
            "invalid_type",
        )
    ids = _check_prompt_ids(ids, server, "prompt")
    return _options(body, server, ids, DEFAULT_COMPLETION_TOKENS)


def parse_chat(body: dict, server: Limits, template) -> Parsed:
    check_model(body, server)
    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "messages is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise APIError(
            422,
            f"messages must be an array of messages, got {_json_type(messages)}",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise _invalid("messages", "is empty: give at least one message")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(422, f"{param} must be an object", param, "invalid_type")
        if "role" not in message:
            raise APIError(
                400, f"{param}.role is required", f"{param}.role", "missing_required_parameter"
            )
        if not isinstance(message["role"], str) or not message["role"]:
            raise APIError(422, f"{param}.role must be a string", f"{param}.role", "invalid_type")
        content = message.get("content")
        if content is None:
            message["content"] = ""
        elif not isinstance(content, (str, list)):
            raise APIError(
                422,
                f"{param}.content must be a string or an array of parts",
                f"{param}.content",
                "invalid_type",
            )
    if server.tokenizer is None:
        raise _invalid("messages", "need a tokenizer, and this model has none: use completions")
    try:
        ids = template.prompt_ids(messages, server.tokenizer)
    except PromptError as error:
        raise APIError(400, str(error), "messages", "invalid_value") from None
    ids = _check_prompt_ids(ids, server, "messages")
    parsed = _options(body, server, ids, server.context_length)
    parsed.stops = parsed.stops + [s for s in template.stop_sequences if s not in parsed.stops]
    return parsed
