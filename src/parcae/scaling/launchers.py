"""Where a sweep's points run: `local` (this process, or a pool of processes) or `ray`.

A launcher is `launch(fn, tasks, workers)`: it calls `fn(*task)` for every task and yields the
return values (results rows) as they finish; the caller writes them. With `workers` > 1 each
worker gets `max(1, cpu_count // workers)` torch threads (and OMP_NUM_THREADS), so that workers
do not fight over cores.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from parcae.errors import MissingDependencyError


def worker_threads(workers: int) -> int:
    """Torch threads for each of `workers` concurrent workers on this machine."""
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_local(fn: Callable, tasks: list[tuple], workers: int) -> Iterator[Any]:
    """One worker: the tasks run in order in this process. More: a pool of `workers` spawned
    processes (spawned with OMP_NUM_THREADS set, before they import torch)."""
    if workers == 1:
        for task in tasks:
            yield fn(*task)
        return
    threads = worker_threads(workers)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the spawned workers
    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            futures = [pool.submit(fn, *task) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:  # on an error or Ctrl-C, start no more tasks
                pool.shutdown(cancel_futures=True)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def _ray_task(fn: Callable, threads: int, *task: Any) -> Any:
    _init_worker(threads)
    return fn(*task)


def run_ray(fn: Callable, tasks: list[tuple], workers: int) -> Iterator[Any]:
    """Ray tasks of `max(1, cpu_count // workers)` CPUs each, on the cluster at RAY_ADDRESS or
    a local one started here (parcae must be importable on every node)."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "the ray launcher", extra="ray") from None
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False
        )
    threads = worker_threads(workers)
    remote = ray.remote(num_cpus=threads, max_retries=0)(_ray_task)
    pending = [remote.remote(fn, threads, *task) for task in tasks]
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        yield ray.get(finished[0])


LAUNCHERS = {"local": run_local, "ray": run_ray}
