"""Loading a model into a `ServingState`, and running the app under uvicorn.

`load_state(path, ...)` loads the model and tokenizer (`load_for_inference`), the chat template
(`tokenizer_config.json` beside the model or in its run directory) and builds the engine.
`bind(host, port)` opens the listening socket first, so that a port in use is one line
(`ParcaeError`) and port 0 picks a free port. `serve(state, sock)` blocks (the CLI);
`ServerThread` runs the same server in a background thread (tests, scripts) and stops it. Both
run uvicorn with the guard of `state.limits` (`parcae.serve.guard`).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from parcae.errors import ConfigError, MissingDependencyError, ParcaeError

ENGINES = ("process", "thread")


def require_serve_extra() -> None:
    """MissingDependencyError naming `parcae[serve]` unless fastapi and uvicorn import."""
    for package in ("fastapi", "uvicorn"):
        try:
            __import__(package)
        except ImportError:
            raise MissingDependencyError(package, "parcae serve", extra="serve") from None


def load_state(
    path,
    device="cpu",
    max_batch: int = 8,
    max_queue: int = 64,
    num_steps: int | None = None,
    adaptive_eps: float | None = None,
    max_num_steps: int | None = None,
    name: str | None = None,
    limits=None,
    compile: bool = False,
    engine: str = "thread",
    threads: int | None = None,
):
    """A `ServingState` for the model at `path` (a model or run directory); `limits`: a
    `ServerLimits` (default: the defaults); compile: the batcher's decode step under
    `torch.compile`; engine: `thread` (the `ContinuousBatcher` on a thread of this process)
    or `process` (on a process of its own, `EngineProcess`: faster under load, as the HTTP
    loop then has its interpreter to itself; a second or so more to start); threads: the
    engine's intra-op threads (a process engine's default: this process's less one; a
    thread engine sets this process's, default unchanged)."""
    from parcae.data.chat_template import ChatTemplate
    from parcae.infer.loading import load_for_inference, resolve_model_dir
    from parcae.serve.app import ServingState
    from parcae.serve.batcher import ContinuousBatcher
    from parcae.serve.engine_process import EngineProcess
    from parcae.serve.guard import ServerLimits

    model, tokenizer = load_for_inference(path, device)
    config = model.config
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary "
            f"{config.vocab_size}"
        )
    if config.default_depth is not None:
        depth = num_steps or config.default_depth
        max_num_steps = max_num_steps or max(2 * config.default_depth, depth)
        if depth > max_num_steps:
            raise ConfigError(f"--num-steps {depth} is above --max-num-steps {max_num_steps}")
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    engine_class = EngineProcess if engine == "process" else ContinuousBatcher
    batcher = engine_class(
        model,
        max_batch,
        max_queue,
        max_num_steps,
        compile=compile,
        threads=threads,
        compile_depth=num_steps,  # the requests' default depth (None: the model's)
    )
    model_dir = resolve_model_dir(path)
    given = str(path)
    name = name or Path(path).resolve().name
    return ServingState(
        model=model,
        tokenizer=tokenizer,
        batcher=batcher,
        name=name,
        template=ChatTemplate.find(model_dir, model_dir.parent),
        aliases=tuple(a for a in (given, given.rstrip("/")) if a != name),
        num_steps=num_steps,
        adaptive_eps=adaptive_eps,
        limits=limits or ServerLimits(),
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: any free port); ParcaeError in one line."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ParcaeError(f"cannot resolve --host {host!r}: {error.strerror or error}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise ParcaeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(state, log_level: str):
    import uvicorn

    from parcae.serve.app import create_app
    from parcae.serve.guard import deadline_protocol

    config = uvicorn.Config(
        create_app(state),
        log_level=log_level,
        access_log=log_level in ("debug", "info"),
        timeout_graceful_shutdown=2,
        http=deadline_protocol(state.limits),
        limit_concurrency=state.limits.max_connections,
    )
    return uvicorn.Server(config)


def serve(state, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on `sock` until interrupted (Ctrl-C)."""
    _uvicorn_server(state, log_level).run(sockets=[sock])


class ServerThread:
    """The server in a background thread on `host` (a free port): `url`, `stop()`."""

    def __init__(self, state, host: str = "127.0.0.1", port: int = 0, log_level="warning"):
        self.state = state
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = _uvicorn_server(state, log_level)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
