"""Where a study's jobs run: in this process, in local worker processes, or as tasks on a Ray cluster.

A study (a comparison, a σ sweep) is a list of independent jobs, one per variant and seed: train
(or resume) and evaluate one run in the study's folder. Every executor calls the same function
on the same arguments, and every job seeds itself from its config, so a run's weights and
evaluation are those of the sequential run bit for bit whichever executor ran it; the parent
reads the results back from the runs' folders.

- ``local`` with ``--jobs 1`` (the default): one job after another, in this process.
- ``local`` with ``--jobs N``: N worker processes on this machine (``spawn``ed, each with
  ``cores / N`` torch threads).
- ``ray`` (``--executor ray [--address HOST:PORT]``): one Ray task per job with its CPU/GPU
  request (``--cpus-per-job``, ``--gpus-per-job``), on an existing Ray cluster (``ray start
  --head`` on one node, ``ray start --address=HEAD:6379`` on the others) or, without an
  address, on a local one. The study folder must be on a filesystem that every node sees at the
  same path.

``shared`` (the data set) is sent once per worker, not once per job.

Layer 4 — may import: the standard library, torch; Ray lazily (an optional extra:
``pip install 'ppl_vae[ray]'``).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

__all__ = ["Executor", "make_executor", "EXECUTORS"]


@dataclass(frozen=True)
class Executor:
    """Runs ``fn(job, shared)`` for every job and returns the results in the jobs' order.

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

    def start(self) -> None:
        """Join what the jobs will run on (a Ray cluster) before anything is written; a no-op otherwise."""
        if self.kind == "ray":
            _ray_init(self)

    def map(
        self,
        fn: Callable[[Any, Any], Any],
        jobs: Sequence[Any],
        shared: Any = None,
        tick: Callable[[int], None] | None = None,
        start: Callable[[int], None] | None = None,
    ) -> list:
        """``tick(i)`` is called in this process as job ``i`` ends (in the order they end), ``start(i)`` as
        it begins where that is here (the sequential executor; the others start jobs elsewhere)."""
        ignore = lambda i: None
        return EXECUTORS[self.kind](self, fn, list(jobs), shared, tick or ignore, start or ignore)


def _sequential(ex: Executor, fn, jobs: list, shared, tick, start) -> list:
    results = []
    for i, job in enumerate(jobs):
        start(i)
        results.append(fn(job, shared))
        tick(i)
    return results


_SHARED: Any = None  # what a local worker process was given once


def _init_worker(threads: int, shared: Any) -> None:
    import torch

    global _SHARED
    torch.set_num_threads(threads)
    _SHARED = shared


def _call(fn, job):
    return fn(job, _SHARED)


def _local(ex: Executor, fn, jobs: list, shared, tick, start) -> list:
    workers = max(1, min(ex.jobs, len(jobs)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads, shared)) as pool:
        futures = [pool.submit(_call, fn, job) for job in jobs]
        index = {future: i for i, future in enumerate(futures)}
        try:
            for future in as_completed(futures):  # a fast job is reported when it ends, not after the slow ones
                future.result()
                tick(index[future])
            results = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()  # jobs not started stay unstarted; a rerun resumes the study
            raise
    return results


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse in one line a ``HOST:PORT`` where nothing listens, before Ray waits a minute to find out."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or "://" in host:
        return  # another form Ray understands ("auto", "ray://..."): Ray checks it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot reach the Ray cluster at {address}: {err}; is `ray start --head` running there?"
        ) from None


def _ray_init(ex: Executor):
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'ppl_vae[ray]'") from None
    if not ray.is_initialized():
        if ex.address:
            _reachable(ex.address)
        try:
            ray.init(address=ex.address or None, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = ex.address or "a new local one"
            raise UserError(f"cannot join the Ray cluster at {where}: {' '.join(str(err).split())[:200]}") from None
    have = ray.cluster_resources()
    for name, want, flag in (("CPU", ex.cpus, "--cpus-per-job"), ("GPU", ex.gpus, "--gpus-per-job")):
        if want > have.get(name, 0.0):  # Ray would wait for them forever
            raise UserError(
                f"{flag} {want:g}: the Ray cluster has {have.get(name, 0.0):g} {name}s in all, so no job could start"
            )
    return ray


def _ray(ex: Executor, fn, jobs: list, shared, tick, start) -> list:
    ray = _ray_init(ex)
    task = ray.remote(num_cpus=ex.cpus, num_gpus=ex.gpus)(fn)
    ref = ray.put(shared)  # once into the object store, read by every task
    refs = [task.remote(job, ref) for job in jobs]
    results = []
    try:
        waiting = list(refs)
        while waiting:  # each job reported as it ends
            ready, waiting = ray.wait(waiting, num_returns=1)
            ray.get(ready[0])
            tick(refs.index(ready[0]))
        results = [ray.get(r) for r in refs]
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):  # the job's own error (a UserError stays one line)
            raise cause from None
        raise
    except BaseException:
        for r in refs:
            ray.cancel(r)
        raise
    return results


EXECUTORS: dict[str, Callable[..., list]] = {
    "sequential": _sequential,
    "local": _local,
    "ray": _ray,
}
"""Executor name -> ``(executor, fn, jobs, shared, tick, start) -> results in the jobs' order`` (see
:meth:`Executor.map`)."""


def make_executor(
    kind: str = "local", jobs: int = 1, address: str = "", cpus: float = 1.0, gpus: float = 0.0
) -> Executor:
    """The executor a study's options ask for: ``local`` with one job is the sequential one."""
    if kind not in ("local", "ray"):
        raise UserError(f"unknown executor {kind!r}; expected local or ray")
    if kind == "local" and jobs <= 1:
        kind = "sequential"
    return Executor(kind, jobs, address, cpus, gpus)
