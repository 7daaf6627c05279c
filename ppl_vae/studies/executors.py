"""Where a study's jobs run: in this process, in local worker processes, or as tasks on a Ray cluster.

A study (a comparison, a σ sweep) is a list of independent jobs, one per variant and seed: train
(or reuse) and evaluate one run in the study's folder. Every executor calls the same function on
the same arguments, and every job seeds itself from its config, so a run's weights and evaluation
are those of the sequential run bit for bit whichever executor trained it; the parent reads the
results back from the runs' folders.

- ``sequential`` (``--jobs 1``, the default): one job after another, in this process.
- ``local`` (``--jobs N``): N worker processes on this machine (``spawn``ed, each with
  ``cores / N`` threads).
- ``ray`` (``--executor ray --address ADDR``): one Ray task per job with its CPU/GPU request, on an
  existing Ray cluster (``ray start --head`` on one node, ``ray start --address=HEAD:6379`` on the
  others) or, without an address, on a local one. The study folder must be on a filesystem that
  every node sees at the same path.

Layer 4 — may import: the standard library, torch; Ray lazily (an optional extra:
``pip install ppl_vae[ray]``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

__all__ = ["Executor", "make_executor", "EXECUTORS"]


@dataclass(frozen=True)
class Executor:
    """Runs ``fn(job)`` for every job and returns the results in the jobs' order.

    Attributes:
        kind: ``sequential``, ``local`` or ``ray``.
        jobs: worker processes of the local executor (the most jobs at once).
        address: the Ray cluster to join (``""``: start a local one).
        cpus, gpus: the resources a Ray task asks for.
    """

    kind: str = "sequential"
    jobs: int = 1
    address: str = ""
    cpus: float = 1.0
    gpus: float = 0.0

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], progress: Callable[[], None] | None = None) -> list:
        return EXECUTORS[self.kind](self, fn, list(jobs), progress or (lambda: None))


def _sequential(ex: Executor, fn, jobs: list, tick) -> list:
    results = []
    for job in jobs:
        results.append(fn(job))
        tick()
    return results


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _local(ex: Executor, fn, jobs: list, tick) -> list:
    workers = min(ex.jobs, len(jobs)) or 1
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(_threads_per_worker(workers),)
    ) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        results = []
        for future in futures:
            results.append(future.result())
            tick()
    return results


def _ray(ex: Executor, fn, jobs: list, tick) -> list:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'ppl_vae[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=ex.address or None, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"cannot join the Ray cluster at {ex.address or 'a new local one'}: {err}") from None
    task = ray.remote(num_cpus=ex.cpus, num_gpus=ex.gpus)(fn)
    refs = [task.remote(job) for job in jobs]
    results = []
    for ref in refs:
        results.append(ray.get(ref))
        tick()
    return results


EXECUTORS: dict[str, Callable[[Executor, Callable, list, Callable], list]] = {
    "sequential": _sequential,
    "local": _local,
    "ray": _ray,
}
"""Executor name -> ``(executor, fn, jobs, tick) -> results in the jobs' order``."""


def make_executor(
    kind: str = "local", jobs: int = 1, address: str = "", cpus: float = 1.0, gpus: float = 0.0
) -> Executor:
    """The executor a study's options ask for: ``local`` with one job is the sequential one."""
    if kind == "local" and jobs <= 1:
        kind = "sequential"
    return Executor(kind, jobs, address, cpus, gpus)
