"""`/metrics`: the engine's counters, the guard's (`parcae.serve.guard`) and the HTTP responses by
status, as Prometheus text; `CountResponses` counts the responses."""

from __future__ import annotations

GUARD = (
    ("disconnects", "Requests whose client disconnected before the answer (status 499)"),
    ("read_timeouts", "Connections closed for not sending a whole request within --read-timeout"),
    ("connections_refused", "Connections closed on arrival beyond --max-connections"),
    ("request_timeouts", "Requests ended by --request-timeout (status 504)"),
)


def metrics_text(state) -> str:
    """The Prometheus text exposition of the engine's and the guard's counters and gauges."""
    stats = state.batcher.stats()
    metrics = [
        ("requests_total", "counter", "Generation requests accepted", stats["requests_total"]),
        (
            "requests_rejected_total",
            "counter",
            "Generation requests refused because the queue was full (429)",
            stats["requests_rejected_total"],
        ),
        (
            "requests_finished_total",
            "counter",
            "Generation requests ended (any reason)",
            stats["requests_finished_total"],
        ),
        (
            "requests_cancelled_total",
            "counter",
            "Generation requests cancelled (client disconnects, stop sequences)",
            stats["requests_cancelled_total"],
        ),
        ("prompt_tokens_total", "counter", "Prompt tokens prefilled", stats["prompt_tokens_total"]),
        (
            "tokens_generated_total",
            "counter",
            "Tokens generated",
            stats["tokens_generated_total"],
        ),
        ("decode_steps_total", "counter", "Batched decode steps", stats["decode_steps_total"]),
        (
            "tokens_per_second",
            "gauge",
            "Tokens generated per second over the last 10 seconds",
            stats["tokens_per_second"],
        ),
        ("queue_depth", "gauge", "Requests waiting for a batch row", stats["queue_depth"]),
        (
            "active_batch_size",
            "gauge",
            "Requests decoding in the batch now",
            stats["active_batch_size"],
        ),
        ("max_batch_size", "gauge", "Rows of the batch", stats["max_batch"]),
        ("max_queue_size", "gauge", "Waiting requests allowed", stats["max_queue"]),
        (
            "mean_loop_steps_per_token",
            "gauge",
            "Mean loop steps per generated token (0 for a GPT)",
            stats["mean_loop_steps_per_token"],
        ),
        *[
            (f"{name}_total", "counter", help_text, state.limits.counters[name])
            for name, help_text in GUARD
        ],
    ]
    lines = []
    for name, kind, help_text, value in metrics:
        lines += [
            f"# HELP parcae_{name} {help_text}.",
            f"# TYPE parcae_{name} {kind}",
            f"parcae_{name} {float(value):.6g}"
            if kind == "gauge"
            else f"parcae_{name} {int(value)}",
        ]
    lines += [
        "# HELP parcae_http_responses_total HTTP responses by status code.",
        "# TYPE parcae_http_responses_total counter",
    ]
    for status, count in sorted(state.responses.items()):
        lines.append(f'parcae_http_responses_total{{status="{status}"}} {count}')
    return "\n".join(lines) + "\n"


class CountResponses:
    """ASGI middleware counting HTTP responses by status (an exception counts as a 500)."""

    def __init__(self, app, counts: dict[int, int]) -> None:
        self.app, self.counts = app, counts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def counting_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                self.counts[status] = self.counts.get(status, 0) + 1
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:
                self.counts[500] = self.counts.get(500, 0) + 1
            raise
