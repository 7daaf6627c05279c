"""Training into a run directory as one transaction: a whole run or nothing, one writer at a time.

- Every input is checked (:mod:`.preflight`) before anything is written, the checkpoint a resume
  continues from included.
- A new run is built in a staging directory beside ``out`` and takes ``out``'s place (replacing an
  old run only with ``overwrite``, and only a directory that is recognisably a ppl_vae run or
  study) when its first checkpoint is written. A run that fails before that leaves nothing, and
  the old run stays as it was.
- One writer at a time: an advisory lock beside ``out`` makes a second writer of the same
  directory fail in one line. A resume holds it already (:mod:`.resume`).
- As training goes, ``history.csv`` is rewritten each epoch and checkpoints are written every
  ``checkpoint_every`` epochs (and ``checkpoint_steps`` steps); at the end ``metrics.json``
  (:mod:`.schema`), the figures (:mod:`.figures`) and the report. ``metrics.json`` is written
  last: a run that has it has every output.

:func:`train` is shared by :func:`~ppl_vae.runs.fit.fit` (a new run) and
:func:`~ppl_vae.runs.resume.resume_run` (continuing one).

Layer 3 — imports ``config``, ``storage``, ``data``, ``inference`` and the run's other modules.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import torch

from ..config import Config, is_program_spec, to_toml
from ..data.datasets import Dataset, load_data
from ..errors import UserError
from ..inference.distributed import SINGLE, init_cluster
from ..inference.importance import latent_sites, rng_untouched, trace_pair
from ..inference.predictive import observed_sites
from ..inference.trainer import Interrupted, Trainer, TrainingDiverged
from ..storage.atomic import write_csv, write_text
from ..storage.checkpoint import load_checkpoint, save_checkpoint
from ..storage.directories import locked, make_parents, remove_created, remove_leftovers, staging_dir, swap_in
from ..storage.schema import write_table
from .figures import draw_figures, first_rows
from .layout import RUN_SUBDIRS, check_out_dir
from .preflight import build_checked, check_disk, check_inputs
from .report import write_report
from .run import Run, resolve_device
from .schema import check_position, history_columns, versions
from .sources import SourceFile, record_of, store, user_code_errors
from .timing import timed

log = logging.getLogger(__name__)

__all__ = ["train"]


def train(
    config: Config,
    out: Path,
    sources: dict[str, SourceFile],
    *,
    state: dict | None,
    overwrite: bool,
    data: Dataset | None,
    distributed: bool,
    progress: bool,
    callbacks: list[Callable[[int, dict], None]],
) -> Run:
    """Train ``config``'s program into ``out`` and return the run.

    ``state`` is the checkpoint a resume continues from (``None``: a new run, staged beside
    ``out`` and swapped in at its first checkpoint, replacing an old run only with ``overwrite``).
    Every input is checked before the lock is taken and anything is written.
    """
    device = resolve_device(config.train.device)
    data = data if data is not None else load_data(config.data)
    check_inputs(config, data, device)
    if config.train.patience and data.val is None:
        raise UserError("--patience needs a validation split: pass --validation N (or use a data set that has one)")
    cluster = init_cluster(device) if distributed else SINGLE
    if device.type == "cuda" and cluster.world > 1:
        device = torch.device("cuda", torch.cuda.current_device())

    with user_code_errors(sources):
        pyro.set_rng_seed(config.train.seed)
        program = build_checked(config, data, sources, device)
        if cluster.world > 1:
            pyro.set_rng_seed(config.train.seed + cluster.rank)  # each rank its own Monte Carlo noise
        num_classes = data.num_classes
        run = Run(
            out,
            config,
            program,
            data.data_dim,
            tuple(data.image_shape),
            data=data,
            sources=sources,
            num_classes=num_classes,
        )
        labels, test_labels = _labels_for(run, data, config)
        writer = _Writer(run, sources, data) if cluster.is_main else None  # a rank other than 0 writes nothing
        trainer = Trainer(
            program,
            config.train,
            data.train.to(device),
            data.test.to(device),
            labels=labels,
            test_labels=test_labels,
            name=config.model.program or (config.guide.name if is_program_spec(config.guide.name) else "the program"),
            val=None if data.val is None else data.val.to(device),
            binarize=config.data.binarize,
            data_plate=config.model.data_plate,
            cluster=cluster,
            progress=progress,
            callbacks=callbacks,
            **(writer.hooks() if writer is not None else {}),
            **(_restored(state) if state is not None else {}),  # a resumed run keeps its counters and its step
        )
        if state is not None:
            check_position(state, len(trainer.batches()), config.train.epochs, out)
            load_checkpoint(out / "checkpoint", program, trainer.optimizer, restore_rng=True, device=str(device))
            run.checkpoint = {"epoch": state["epoch"], "step": state["step"]}
        if cluster.is_main:  # once every input, the checkpoint's tensors included, has been checked
            log.info(trainer.step_reason)
        if writer is None:  # a rank other than 0 trains its shard and writes nothing
            trainer.fit()
            run.history = trainer.history
            return run
        created = make_parents(out) if state is None else []  # the lock file lives beside out
        try:
            with locked(out, "--out") if state is None else contextlib.nullcontext():
                if state is None:
                    check_out_dir(out, overwrite)  # again, now that no other writer can change it
                    remove_leftovers(out, RUN_SUBDIRS)
                return _transaction(out, run, trainer, writer, state is not None)
        finally:
            if not out.exists():
                remove_created(created)


def _restored(state: dict) -> dict:
    """The trainer's counters as the checkpoint ``state`` left them: where in which epoch, and the step it took."""
    extra = state["extra"]
    return {
        "epoch": state["epoch"],
        "step": state["step"],
        "batch_index": extra["batch_index"],
        "epoch_loss": extra["epoch_loss"],
        "history": extra["history"],
        "step_kind": extra.get("step_kind"),
    }


class _Target:
    """Where a run's files go: a staging directory until the first checkpoint, then ``out``."""

    def __init__(self, out: Path, fresh: bool):
        self.out, self.fresh = out, fresh
        self.existed = out.exists()
        self.dir = staging_dir(out) if fresh else out
        self.committed = not fresh

    def commit(self) -> None:
        if not self.committed:
            swap_in(self.dir, self.out)
            self.dir, self.committed = self.out, True

    def abort(self) -> None:
        if not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)


def _transaction(out: Path, run: Run, trainer: Trainer, writer: _Writer, resumed: bool) -> Run:
    """Train into a :class:`_Target`; on any failure before the first checkpoint, leave nothing."""
    target = _Target(out, fresh=not resumed)
    try:
        check_disk(target.dir, run.program)
        return _train_into(target, run, trainer, writer, resumed)
    except TrainingDiverged as err:
        target.abort()
        if target.committed:
            raise
        kept = f"{out} is as it was" if target.existed else "nothing was written"
        raise TrainingDiverged(err.reason, f"training stopped before its first checkpoint: {kept}") from None
    except Interrupted as err:
        target.abort()
        if not err.forced:
            raise
        if target.committed and run.checkpoint:
            where = f"epoch {run.checkpoint['epoch']}, step {run.checkpoint['step']}"
            kept = f"the last whole checkpoint ({where}) is kept"
        else:
            kept = f"no checkpoint was written: {out} is as it was" if target.existed else "nothing was written"
        raise Interrupted(err.signum, err.forced, f"{err}: training stopped at once; {kept}") from None
    except BaseException:
        target.abort()
        raise


class _Writer:
    """The trainer's hooks for a run being written: ``history.csv`` each epoch, the checkpoints, the best epoch.

    Its files go to the transaction's target, set by :meth:`begin` when the transaction starts;
    the trainer calls the hooks only from ``fit``, after that.
    """

    def __init__(self, run: Run, sources: dict[str, SourceFile], data: Dataset):
        self.run, self.config, self.sources, self.data = run, run.config, sources, data
        self.target: _Target | None = None
        self.extra_fixed: dict = {}

    def hooks(self) -> dict:
        """The trainer's ``on_epoch``, ``on_step`` and ``on_interrupt``."""
        every = self.config.train.checkpoint_steps
        on_step = (lambda t: self.checkpoint(t) if t.step % every == 0 else None) if every else None
        return {"on_epoch": self.on_epoch, "on_step": on_step, "on_interrupt": self.checkpoint}

    def begin(self, target: _Target) -> None:
        """Write what does not change as training goes (``config.toml``, the programs' copies) into ``target``."""
        run, data = self.run, self.data
        self.target = target
        write_text(target.dir / "config.toml", to_toml(self.config))
        if target.fresh:
            store(self.sources, target.dir)
        self.extra_fixed = {
            "data_dim": data.data_dim,
            "image_shape": list(data.image_shape),
            "num_classes": run.num_classes,
            "data_plate": run.program.data_plate,  # found by the trial (or named with --data-plate)
        }
        if self.sources:
            self.extra_fixed["programs"] = record_of(self.sources)

    def checkpoint(self, t: Trainer) -> None:
        """Write the checkpoint of where ``t`` is; the first one puts the new run in ``out``'s place."""
        save_checkpoint(
            self.target.dir / "checkpoint",
            self.run.program,
            t.optimizer,
            epoch=t.epoch,
            step=t.step,
            config=self.config.to_dict(),
            extra={
                "step_kind": t.step_kind,
                "batch_index": t.batch_index,
                "epoch_loss": t.epoch_loss,
                "history": t.history,
                **self.extra_fixed,
            },
        )
        self.target.commit()  # the first checkpoint puts the new run in out's place
        self.run.checkpoint = {"epoch": t.epoch, "step": t.step}

    def on_epoch(self, t: Trainer) -> None:
        """``history.csv``; the best epoch's weights (early stopping); a checkpoint when one is due."""
        train, where, config = self.config.train, self.target.dir, self.config.to_dict()
        write_csv(where / "history.csv", t.history, history_columns(t.history))
        if train.patience and t.best_epoch() == t.epoch:  # before the checkpoint: a resume finds it
            save_checkpoint(where / "best", self.run.program, None, epoch=t.epoch, step=t.step, config=config)
        if t.epoch % train.checkpoint_every == 0 or t.epoch == train.epochs or t.stopped_early():
            self.checkpoint(t)


def _train_into(target: _Target, run: Run, trainer: Trainer, writer: _Writer, resumed: bool) -> Run:
    config = run.config
    writer.begin(target)
    start = time.perf_counter()
    trainer.fit()
    if not target.committed:  # nothing left to train (a resume killed after its last checkpoint)
        writer.checkpoint(trainer)
    seconds = sum(row["seconds"] for row in trainer.history) if resumed else time.perf_counter() - start
    run.history = trainer.history
    run.step_kind = trainer.step_kind
    if config.train.patience:
        # the run ends with the best validation epoch's weights, in the checkpoint that load() reads too
        load_checkpoint(target.dir / "best", run.program, device=str(run.device))
        writer.checkpoint(trainer)
    run.checkpoint = run.checkpoint or {"epoch": trainer.epoch, "step": trainer.step}
    _write_outputs(run, seconds, trainer.history[0]["test_elbo"], trainer.best_epoch())
    return run


def _labels_for(run: Run, data: Dataset, config: Config) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The training labels the program sees (-1: unlabelled) and the test labels it is given, if any."""
    takes_y = run.program.takes("y")
    if config.data.labels != "0" and not takes_y:
        raise UserError(
            f"--labels {config.data.labels}: the program's model and guide take no input y, so labels would be ignored"
        )
    if not takes_y:
        return None, None
    labels = data.label_tensor()
    if labels is None:
        labels = torch.full((len(data.train),), -1, dtype=torch.int64)
    test_labels = None
    if run.conditional:
        if data.test_labels is None:
            raise UserError(f"--labels all: the test split of {data.name} has no labels to condition on")
        test_labels = torch.as_tensor(np.asarray(data.test_labels), dtype=torch.int64)
    return labels, test_labels


def _write_outputs(run: Run, seconds: float, first_test_elbo: float, best_epoch: int | None) -> None:
    data, cfg, out = run.dataset(), run.config, run.path
    last = run.history[-1]
    run.metrics = {
        "train_objective": last["train_objective"],
        "test_elbo": last["test_elbo"],
        "first_epoch_test_elbo": first_test_elbo,
        "epochs": last["epoch"],
        "seconds": seconds,
        **_what_ran(run),
        "latent_dim": cfg.model.latent_dim,
        "data": data.name,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "n_labelled": 0 if data.labelled is None else len(data.labelled),
        "parameters": sum(p.numel() for p in run.program.parameters()),
        "step": run.step_kind,  # eager, replayed or compiled; why is printed when training starts
        "versions": versions(),
    }
    if best_epoch is not None:  # a validation split: its best epoch (the weights kept with early stopping)
        run.metrics["best_epoch"] = best_epoch
        run.metrics["best_val_elbo"] = run.history[best_epoch - 1]["val_elbo"]
    write_csv(out / "history.csv", run.history, history_columns(run.history))
    with timed("the run's figures"):
        absent = draw_figures(run, data, out / "figures", run.metrics.get("observed_sites", []))
    if absent:
        run.metrics["figures_absent"] = absent
    write_table(out / "metrics.json", run.metrics)  # last: a run with metrics.json has every output
    with timed("the report"):
        write_report(out)


def _what_ran(run: Run) -> dict:
    """What ``metrics.json`` says was run: the built-in parts by name, a user's program by its file and its sites.

    A user's program is described by what it is — the spec, the sha256 of the stored copy, its
    latent and observed sites and its data plate — never by the defaults of built-in options it
    does not use (σ, the prior, the likelihood).
    """
    cfg = run.config
    described: dict = {}
    if cfg.model.program:
        described["model"] = cfg.model.program
    else:
        described.update(likelihood=cfg.model.likelihood, sigma=cfg.model.sigma, prior=cfg.model.prior)
    described["guide"] = (
        cfg.guide.name if not cfg.model.program or is_program_spec(cfg.guide.name) else cfg.model.program
    )
    for role, source in run.sources.items():
        described[f"{role}_sha256"] = source.sha256
    if run.sources:
        x = run.dataset().test[:2].to(run.device)
        labels = run.dataset().test_labels
        inputs = first_rows(run.inputs(None if labels is None else labels[:2]), 2)
        with user_code_errors(run.sources), rng_untouched(x), pyro.validation_enabled(False):
            guide_trace, model_trace = trace_pair(run.program.model, run.program.guide, x, **inputs)
        described["latent_sites"] = [
            s["name"] for s in latent_sites(model_trace) if not s["infer"].get("_deterministic")
        ]
        described["observed_sites"] = [s["name"] for s in observed_sites(model_trace)]
        described["data_plate"] = run.program.data_plate
    return described
