"""Stopping on SIGINT/SIGTERM at a step boundary, so that the run can checkpoint first."""

from __future__ import annotations

import signal


class StopSignals:
    """While entered, SIGINT and SIGTERM set `received` (the signal number) instead of
    stopping the process; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
