"""Continuing a run in place: the same data order and RNG states, so the result equals an uninterrupted run.

A resume reads the run's checkpoint and continues with the run's own config; it may extend
:data:`RESUMABLE` (``train.epochs``) and changes nothing else. It trains in place under the run
directory's lock (:mod:`.transaction`); a run that has trained all its epochs and written its
outputs is returned as it is, with no lock (a finished run on a read-only disk is a no-op too).
A run made from a user's program imports the stored copy of it only when the caller trusts it.

Layer 3 — imports ``config``, ``storage`` and the run's other modules.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import Config
from ..data.datasets import Dataset
from ..errors import UserError
from ..storage.checkpoint import read_state
from ..storage.directories import check_contained, locked, remove_leftovers
from .layout import RUN_SUBDIRS, kind_of
from .load import load
from .preflight import with_absolute_sources
from .run import Run
from .schema import check_extra, config_of, read_metrics
from .sources import stored_sources
from .transaction import train

__all__ = ["resume_run", "resume_plan", "differences", "RESUMABLE"]

RESUMABLE = ("train.epochs",)
"""The options ``resume`` may change: only the number of epochs, to extend a run."""


def resume_run(config: Config | None, out: Path, hooks: dict, data: Dataset | None, trust: bool) -> Run:
    """Continue the run at ``out`` (with ``config``: the run's own with more ``train.epochs``, or ``None``).

    ``hooks`` are :func:`~.transaction.train`'s ``progress`` and ``callbacks``; ``trust`` allows
    importing the run's stored program.
    """
    finished = _finished(resume_plan(config, out)[1], out, trust)
    if finished is not None:  # nothing to write: no lock either, so a run on a read-only disk is a no-op too
        return finished
    with locked(out, "run directory"):
        return _resume_locked(config, out, hooks, data, trust)


def resume_plan(config: Config | None, out: Path) -> tuple[dict, Config]:
    """The checkpoint a resume continues from and the config it continues with, every part checked; reads only."""
    kind = kind_of(out)
    if kind != "run":
        what = {"missing": "does not exist", "file": "is a file"}.get(kind, "is not a ppl_vae run directory")
        raise UserError(f"--resume {out} {what}")
    state = read_state(out / "checkpoint")
    run_config = config_of(state, out)
    check_extra(state, out)
    if config is not None:
        given = with_absolute_sources(config.validate())
        changed = [d for d in differences(run_config, given) if d not in RESUMABLE]
        if changed:
            raise UserError(
                f"--resume continues {out} with its own settings; {', '.join(changed)} differ from them "
                f"(resume may change only {', '.join(RESUMABLE)}, to extend the run)"
            )
        if given.train.epochs < state["epoch"]:
            raise UserError(
                f"--epochs {given.train.epochs} is fewer than the {state['epoch']} epochs {out} has trained"
            )
        run_config.train.epochs = given.train.epochs
    return state, run_config


def _finished(run_config: Config, out: Path, trust: bool) -> Run | None:
    """The run, loaded, when it has trained all its epochs and written its outputs; else ``None``."""
    state = read_state(out / "checkpoint")
    if state["epoch"] >= run_config.train.epochs and read_metrics(out):
        run = load(out, trust_program=trust)
        run.note = "finished"
        return run
    return None


def _resume_locked(config: Config | None, out: Path, hooks: dict, data: Dataset | None, trust: bool) -> Run:
    """The resume itself, under the run directory's lock."""
    state, run_config = resume_plan(config, out)  # again, now that no other writer can change it
    finished = _finished(run_config, out, trust)
    if finished is not None:
        return finished
    check_contained(out, RUN_SUBDIRS)  # before anything is written
    remove_leftovers(out, RUN_SUBDIRS)
    sources = stored_sources(out, run_config, state["extra"].get("programs"), trust)
    return train(run_config, out, sources, state=state, overwrite=False, data=data, distributed=False, **hooks)


def differences(a: Config, b: Config) -> list[str]:
    """``section.field`` of every option in which ``a`` and ``b`` differ."""
    return [
        f"{section}.{f.name}"
        for section in ("data", "model", "guide", "train")
        for f in dataclasses.fields(getattr(a, section))
        if getattr(getattr(a, section), f.name) != getattr(getattr(b, section), f.name)
    ]
