"""``fit``: train the program a config describes and leave a run directory with everything needed to use it.

The public entry of a run: it checks the config and the output directory, reads the named program
files (the caller named them: importing them is its trust), and hands over to the write
transaction (:mod:`.transaction`); with ``resume=True`` to :mod:`.resume`.

Layer 3 — imports ``config`` and the run's other modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import Config
from ..data.datasets import Dataset
from ..errors import UserError
from .layout import check_out_dir, refuse_inputs_inside
from .preflight import with_absolute_sources
from .resume import resume_run
from .run import Run
from .sources import SourceFile, read_named
from .transaction import train

__all__ = ["fit"]


def fit(
    config: Config | None,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    distributed: bool = False,
    trust_program: bool = False,
    callbacks: Sequence[Callable[[int, dict], None]] = (),
) -> Run:
    """Train the program ``config`` describes and write a run directory at ``out``.

    Everything is validated (config, data, program, memory, the output directory) before
    anything is written, and the run is written as a transaction (see :mod:`ppl_vae.runs.transaction`).
    With ``resume=True``, training continues from ``out/checkpoint`` with the same data order
    and RNG states, so the result equals an uninterrupted run; ``config`` is then ``None`` (the
    run's own) or the run's config with more ``train.epochs``, and a run made from a user program
    needs ``trust_program=True`` (its stored copy is imported). With ``distributed=True`` (under
    torchrun) every rank trains its shard of each batch with DDP and rank 0 writes the run.
    Each of ``callbacks`` is called as ``f(epoch, row)`` after every epoch, once the epoch is on
    disk, with the epoch's row of ``history.csv`` (objective, test and validation ELBO, β, seconds):
    the place for a tracker, a notebook plot or a custom stopping rule.
    """
    out = Path(out)
    hooks = {"progress": progress, "callbacks": list(callbacks)}
    if resume:
        if distributed:
            raise UserError(
                "--resume continues single-process runs; a distributed run restarts from its last checkpoint by hand"
            )
        return resume_run(config, out, hooks, data, trust_program)
    if config is None:
        raise UserError("fit needs a config (or resume=True to continue a run)")
    config.validate()
    check_out_dir(out, overwrite)
    config = with_absolute_sources(config)
    sources = read_named(config)  # the caller named these files: importing them is its trust
    if overwrite:
        refuse_inputs_inside(out, _inputs(config, sources))
    return train(config, out, sources, state=None, overwrite=overwrite, data=data, distributed=distributed, **hooks)


def _inputs(config: Config, sources: dict[str, SourceFile]) -> list[Path]:
    """The files a run is made from: its program files, a data file, a data root."""
    inputs = [Path(p.path) for p in sources.values()]
    if config.data.name.endswith((".npy", ".npz")):
        inputs.append(Path(config.data.name))
    if config.data.root:
        inputs.append(Path(config.data.root))
    return inputs
