"""What the server enforces against clients it does not trust: `ServerLimits` and their defaults.

- **Read timeout** (`--read-timeout`, default 30 s): a connection must deliver a whole request,
  headers and body, within this time of opening (or of the previous response); otherwise it is
  closed. uvicorn times out idle keep-alive connections (`timeout_keep_alive`) but not a request
  that is half sent, so `DeadlineProtocol` adds that deadline to uvicorn's h11 protocol.
- **Connection cap** (`--max-connections`, default 256): beyond it uvicorn answers 503
  (`limit_concurrency`) and a connection that would exceed it is closed as soon as it is
  accepted, so no client can hold every file descriptor. Headers are bounded by h11 (16 KiB).
- **Request time limit** (`--request-timeout`, default 600 s): a generation running longer ends
  with a 504 (`timeout`), its engine row freed.
- **API key** (`--api-key` or `PARCAE_API_KEY`): every `/v1/*` and `/metrics` request must carry
  `Authorization: Bearer KEY`, else 401 in OpenAI's error shape (`invalid_api_key`); `/health`
  and the chat page stay open (the page asks for the key and sends it).
- **CORS** is off (browsers refuse cross-origin reads) unless `--allowed-origins` lists origins.

Counters of what the guard did (`read_timeouts`, `connections_refused`, `disconnects`,
`request_timeouts`) are exported by `/metrics`, apart from the HTTP status counts.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

from parcae.errors import ConfigError
from parcae.values import is_finite_number

logger = logging.getLogger("parcae.serve")

API_KEY_ENV = "PARCAE_API_KEY"
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_REQUEST_TIMEOUT_S = 600.0
MAX_CONNECTIONS = 65536  # beyond any process's file descriptors
MAX_TIMEOUT_S = 86400.0  # a day
PROTECTED_PREFIXES = ("/v1/", "/metrics")


@dataclass
class ServerLimits:
    """The guard's settings (module docstring); `check()` refuses a value out of range."""

    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    counters: Counter = field(default_factory=Counter)

    def check(self) -> ServerLimits:
        for flag, value in (
            ("--read-timeout", self.read_timeout),
            ("--request-timeout", self.request_timeout),
        ):
            if not is_finite_number(value) or not 0 < value <= MAX_TIMEOUT_S:
                raise ConfigError(f"{flag} must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {value}")
        if not isinstance(self.max_connections, int) or not (
            1 <= self.max_connections <= MAX_CONNECTIONS
        ):
            raise ConfigError(
                f"--max-connections must be in [1, {MAX_CONNECTIONS}], got {self.max_connections}"
            )
        if self.api_key is not None and (not self.api_key or not self.api_key.isprintable()):
            raise ConfigError("--api-key must be a non-empty printable string")
        return self

    @classmethod
    def from_args(cls, args) -> ServerLimits:
        """From `parcae serve`'s options; the key falls back to $PARCAE_API_KEY."""
        origins = tuple(o.strip() for o in (args.allowed_origins or "").split(",") if o.strip())
        return cls(
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
            request_timeout=args.request_timeout,
            api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
            allowed_origins=origins,
        ).check()


def deadline_protocol(limits: ServerLimits):
    """uvicorn's h11 protocol with the read deadline and the connection cap of `limits`."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineProtocol(H11Protocol):
        deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                limits.counters["connections_refused"] += 1
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(limits.read_timeout, self._expire)

        def _expire(self) -> None:
            """Close a connection whose request (headers and body) is still incomplete."""
            if self.transport.is_closing() or self.conn.their_state not in (
                h11.IDLE,
                h11.SEND_BODY,
            ):
                return
            limits.counters["read_timeouts"] += 1
            logger.info(
                "closed the connection of %s: no whole request within %g s",
                "{}:{}".format(*self.client) if self.client else "a client",
                limits.read_timeout,
            )
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

    return DeadlineProtocol


class RequireApiKey:
    """ASGI middleware: 401 in OpenAI's error shape for a protected path without the key."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _send_json(send, 401, _unauthorized(bool(given)))
                return
        await self.app(scope, receive, send)


def _unauthorized(given: bool) -> dict:
    from parcae.serve.protocol import error_body  # torch comes with it: not at `parcae --help`

    message = (
        "Incorrect API key provided"
        if given
        else "You didn't provide an API key: send the header 'Authorization: Bearer KEY'"
    )
    return error_body(message, "invalid_request_error", None, "invalid_api_key")


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
