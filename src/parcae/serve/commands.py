"""`parcae serve`: the OpenAI-compatible server and chat page (needs `parcae[serve]`)."""

from __future__ import annotations

import argparse
import sys

from parcae.commands import add_model_argument
from parcae.errors import ConfigError, PromptError
from parcae.serve.guard import (
    API_KEY_ENV,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    ServerLimits,
)


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server with continuous batching, and a chat page at /",
    )
    add_model_argument(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    serve.add_argument(
        "--max-batch", type=int, default=8, help="requests decoded together (rows of the cache)"
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="waiting requests beyond which a request is answered 429 with Retry-After",
    )
    serve.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="default loop depth T of a request (default: the model's mean recurrence); a "
        "request may set its own with the body field num_steps",
    )
    serve.add_argument(
        "--max-num-steps",
        type=int,
        default=None,
        help="deepest loop a request may ask for (default: twice the mean recurrence)",
    )
    serve.add_argument(
        "--adaptive",
        type=float,
        default=None,
        metavar="EPS",
        help="default per-token early exit threshold (body field adaptive_eps)",
    )
    serve.add_argument(
        "--compile",
        action="store_true",
        help="run the decode step under torch.compile (a C++ compiler on CPU): before serving, "
        "it compiles for 1, 2, 4, ... --max-batch rows at the default depth, each shown as it "
        "ends (tens of seconds each on a CPU; a restart reuses torch's compile cache)",
    )
    serve.add_argument(
        "--engine",
        choices=("process", "thread"),
        default="process",
        help="where the decode loop runs: a process of its own (default; the HTTP loop then "
        "keeps its interpreter to itself) or a thread of the server's",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of the decode loop (default: with --engine process, the cores "
        "less one, which the HTTP loop keeps; with --engine thread, torch's default)",
    )
    serve.add_argument("--name", default=None, help="model id to serve (default: the path's name)")
    serve.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1 and /metrics (default: ${API_KEY_ENV})",
    )
    serve.add_argument(
        "--allowed-origins",
        default=None,
        metavar="ORIGINS",
        help="comma-separated origins allowed cross-origin requests (default: none, CORS off)",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        help="seconds a connection has to send a whole request, headers and body",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections beyond which new ones are refused (503, or closed)",
    )
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="seconds a generation may run before it ends with 504",
    )
    serve.add_argument("--device", default="cpu")
    serve.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Options, the serve extra, the port and the model are checked before serving; Ctrl-C
    stops the server cleanly (exit code 0)."""
    from parcae.device import resolve_device
    from parcae.infer.sampling import SamplingParams, restate
    from parcae.model.base import check_num_steps
    from parcae.serve.server import bind, load_state, require_serve_extra, serve

    require_serve_extra()
    device = resolve_device(args.device, "--device")
    for flag, value in (
        ("--max-batch", args.max_batch),
        ("--max-queue", args.max_queue),
        ("--threads", 1 if args.threads is None else args.threads),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    restate(  # the request defaults, checked as a request's
        {"num_steps": "--num-steps", "adaptive": "--adaptive"},
        lambda: SamplingParams(num_steps=args.num_steps, adaptive=args.adaptive),
    )
    check_num_steps(args.max_num_steps, "--max-num-steps", PromptError)
    limits = ServerLimits.from_args(args)
    sock = bind(args.host, args.port)
    state = None
    try:
        state = load_state(
            args.model,
            device,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            num_steps=args.num_steps,
            adaptive_eps=args.adaptive,
            max_num_steps=args.max_num_steps,
            name=args.name,
            compile=args.compile,
            engine=args.engine,
            threads=args.threads,
            limits=limits,
        )
        state.batcher.start()  # here, so that an engine that cannot start is one line
        host, port = sock.getsockname()[:2]
        print(
            f"parcae: serving {state.name} on http://{args.host}:{port} "
            f"(chat page at /, OpenAI API at /v1)",
            file=sys.stderr,
            flush=True,
        )
        try:
            serve(state, sock, args.log_level)
        except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the signal
            print("parcae: server stopped", file=sys.stderr)
    finally:
        if state is not None:
            state.batcher.stop()  # (the app's shutdown stopped it already, if it ran)
        sock.close()
    return 0
