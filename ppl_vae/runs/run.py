"""A run: fit a program to data and leave a directory with everything needed to use it again.

The directory's layout is :mod:`ppl_vae.runs.layout`'s. Writing one is a transaction:

- Every input is checked before anything is written: the config, the data, the program (built
  and traced once: its latent sites, the objective), the memory a step needs, the output path.
- A new run is built in a staging directory beside ``out`` and takes ``out``'s place (replacing
  an old run only with ``overwrite``, and only a directory that is recognisably a ppl_vae run or
  study) when its first checkpoint is written. A run that fails before that leaves nothing, and
  the old run stays as it was.
- One writer at a time: an advisory lock beside ``out`` makes a second ``fit`` (or ``evaluate``)
  of the same directory fail in one line.
- ``resume`` continues in place under the same lock; it may extend ``train.epochs`` and changes
  nothing else. Readers (:func:`load`) take no lock and see one consistent checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..config import Config, from_dict, is_program_spec, to_toml
from ..contracts import DATA_PLATE
from ..data.datasets import Dataset, load_data
from ..errors import CheckpointError, StorageError, UserError
from ..inference.compiled import STEP_KINDS, as_step_kind
from ..inference.distributed import SINGLE, init_cluster
from ..inference.importance import latent_sites, rng_untouched, trace_pair
from ..inference.predictive import data_columns, observed_sites, prior_decode, reconstruct, repeat_rows
from ..inference.trainer import Interrupted, Trainer, TrainingDiverged, check_params
from ..plots.figures import image_grid, plot_history, plot_images, plot_reconstructions, save_figure
from ..storage.atomic import write_csv, write_text
from ..storage.checkpoint import load_checkpoint, read_checkpoint, read_state, save_checkpoint
from ..storage.directories import (
    check_contained,
    locked,
    make_parents,
    remove_created,
    remove_leftovers,
    staging_dir,
    swap_in,
)
from ..storage.schema import read_table, write_table
from .budget import check_memory, human, training_bytes
from .build import Program, build_program, check_support
from .layout import RUN_SUBDIRS, foreign_entries, kind_of
from .programs import ProgramFile, program_errors, read_named, record_of, store, stored_programs
from .report import write_report

log = logging.getLogger(__name__)

__all__ = [
    "Run",
    "fit",
    "load",
    "check_out_dir",
    "resolve_device",
    "read_run_config",
    "read_metrics",
    "preflight",
    "with_absolute_programs",
    "check_latent_sites",
    "RESUMABLE",
    "versions",
]

N_FIGURE = 10  # test images shown in reconstructions.png
K_FIGURE = 4  # decodings of z ~ q(z|x) shown below each
HISTORY_COLUMNS = ("epoch", "train_objective", "test_elbo", "beta", "seconds")
RESUMABLE = ("train.epochs",)
"""The options ``resume`` may change: only the number of epochs, to extend a run."""


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` names; ``auto`` is CUDA when a device is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an ``out`` that a new run may not take: an existing file, someone else's folder, or a
    run or study without ``overwrite`` (and, with it, one holding files ppl_vae did not write)."""
    out = Path(out)
    kind = kind_of(out)
    if out.exists() and out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise UserError(f"--out {out} is the working directory or holds it; give a folder from outside it")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link; give the directory it points to, or another path")
    if kind == "file":
        raise UserError(f"--out {out} exists and is not a directory")
    if kind in ("missing", "empty"):
        return out
    if kind == "other":
        if overwrite:
            raise UserError(
                f"--out {out} is not a ppl_vae run or study; --overwrite replaces only those, so it is kept: "
                "choose another --out"
            )
        raise UserError(f"--out {out} already exists and is not empty; choose another --out")
    if not overwrite:
        raise UserError(f"--out {out} already holds a ppl_vae {kind}; pass --overwrite to replace it")
    foreign = foreign_entries(out)
    if foreign:
        names = ", ".join(str(p.relative_to(out)) for p in foreign)
        raise UserError(
            f"--out {out} holds files ppl_vae did not write ({names}); --overwrite would delete them, so nothing "
            "was replaced: move them or choose another --out"
        )
    return out


@dataclass
class Run:
    """A trained program, its configuration and its numbers."""

    path: Path
    config: Config
    program: Program
    data_dim: int
    image_shape: tuple[int, ...]
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    data: Dataset | None = None
    checkpoint: dict = field(default_factory=dict)  # epoch and step of the weights held
    programs: dict[str, ProgramFile] = field(default_factory=dict, repr=False)
    note: str = ""  # "finished": a resume found nothing left to train
    step_kind: str = ""  # the training step fit() took: eager, replayed or compiled ("" before steps were recorded)
    num_classes: int | None = None

    @property
    def device(self) -> torch.device:
        return next(self.program.parameters()).device

    @property
    def model_module(self) -> torch.nn.Module:
        """The module whose ``model`` was trained, as built: what ``--model file.py:factory`` returned, with its
        own attributes (``run.model_module.encoder``), or the built-in model. ``run.program`` is the bench's
        wrapper around it and :attr:`guide_module`."""
        return self.program.model_module

    @property
    def guide_module(self) -> torch.nn.Module:
        """The module whose ``guide`` was trained: the same object as :attr:`model_module` where one factory
        built both, what ``--guide file.py:factory`` returned, or the built-in guide."""
        return self.program.guide_module

    def dataset(self) -> Dataset:
        if self.data is None:
            self.data = load_data(self.config.data)
        return self.data

    @property
    def conditional(self) -> bool:
        """Whether the program is conditioned on labels: it takes y and saw them for every point (``--labels all``)."""
        return self.config.data.labels == "all" and self.program.takes("y")

    def inputs(self, labels=None) -> dict:
        """What the program gets beside rows whose labels are ``labels`` when it is evaluated.

        A program conditioned on y gets the labels; one that takes y otherwise gets ``y=None``
        (the rows count as unlabelled: y is summed out); others get nothing.
        """
        if not self.program.takes("y"):
            return {}
        if not self.conditional:
            return {"y": None}
        if labels is None:
            raise UserError("this run's program is conditioned on labels (--labels all); the data set has none")
        return {"y": torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=self.device)}

    def reconstruct(self, x: torch.Tensor, num_particles: int = 1, **inputs) -> torch.Tensor | None:
        """Decodings of ``num_particles`` draws z ~ q(z|x): ``(K, B, D)`` (``None``: no observed site holds x)."""
        with program_errors(self.programs):
            return reconstruct(self.program.model, self.program.guide, x.to(self.device), num_particles, **inputs)

    def sample(self, n: int, like: torch.Tensor | None = None, **inputs) -> torch.Tensor | None:
        """Decodings of n draws z ~ p(z): ``(n, D)``, given ``inputs`` (``y`` ``(n,)``) and rows ``like`` (a given
        quadrant: what the model conditions on); ``None`` if no observed site holds x or a part of it. Global
        latents are one draw θ ~ q(θ).

        A program whose observed site holds only some of x's columns conditions on the others: without
        ``like`` it is given the test split's first rows (repeated to n)."""
        like = None if like is None else like.to(self.device)
        with program_errors(self.programs):
            if like is None and self._observes_part_of_x(**inputs):
                like = self.dataset().test[:n].to(self.device)
            guide = self.program.guide  # global latents θ ~ q(θ): the fitted decoder, not its prior
            return prior_decode(self.program.model, n, self.data_dim, self.device, like=like, guide=guide, **inputs)

    def _observes_part_of_x(self, **inputs) -> bool:
        x = torch.zeros((2, self.data_dim), device=self.device)
        with rng_untouched(x):
            return data_columns(self.program.model, x, **repeat_rows(inputs, 2)) is not None

    def heldout_elpd(self):
        """The held-out elpd ``ppl-vae evaluate`` measured, as ``arviz.ELPDData``: ``az.compare``'s input.

        Sum over the evaluated test points of the IWAE-K log p(x_i), per-point values in
        ``loo_i`` (see :mod:`ppl_vae.diagnostics.elpd`). ``az.loo`` on ``inference_data.nc`` is
        refused: its posterior draws are of each point's own latent.

        Example:
            >>> import arviz as az  # doctest: +SKIP
            >>> az.compare({"iaf": ppl_vae.load("runs/iaf").heldout_elpd(),  # doctest: +SKIP
            ...             "diagonal": ppl_vae.load("runs/diagonal").heldout_elpd()})
        """
        from .evaluation import read_heldout_elpd

        return read_heldout_elpd(self.path)


# --- what a run directory holds, checked ------------------------------------------------------------


def _history_columns(history: list[dict]) -> list[str]:
    keys = set().union(*history) if history else set()
    return [c for c in HISTORY_COLUMNS if c in keys] + sorted(keys - set(HISTORY_COLUMNS))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_extra(state: dict, where: Path) -> dict:
    """The fields a run keeps in its checkpoint's ``extra``, each checked."""
    extra = state["extra"]
    allowed = {
        "batch_index",
        "epoch_loss",
        "history",
        "data_dim",
        "image_shape",
        "programs",
        "step_kind",
        "num_classes",
        "data_plate",
    }
    history = extra.get("history")
    problem = None
    if set(extra) - allowed:
        problem = f"unexpected fields {sorted(set(extra) - allowed)}"
    elif not _count(extra.get("data_dim"), 1):
        problem = "the data shape (data_dim) is missing or not a positive integer"
    elif not (
        isinstance(extra.get("image_shape"), list)
        and extra["image_shape"]
        and all(_count(s, 1) for s in extra["image_shape"])
        and math.prod(extra["image_shape"]) == extra["data_dim"]
    ):
        problem = "image_shape must be positive integers whose product is data_dim"
    elif not _count(extra.get("batch_index")):
        problem = "batch_index must be a non-negative integer"
    elif not _number(extra.get("epoch_loss")):
        problem = "epoch_loss must be a number"
    elif not isinstance(history, list) or len(history) != state["epoch"]:
        problem = f"history must list one row for each of the {state['epoch']} completed epochs"
    elif not all(
        isinstance(row, dict)
        and row.get("epoch") == i + 1
        and all(isinstance(k, str) and _number(v) for k, v in row.items())
        for i, row in enumerate(history)
    ):
        problem = "history rows must be numbers, one row an epoch, in order"
    elif extra.get("step_kind") is not None and not _step_kind(extra["step_kind"]):
        problem = f"step_kind must be one of {', '.join(STEP_KINDS)}"
    elif extra.get("num_classes") is not None and not _count(extra["num_classes"], 1):
        problem = "num_classes must be a positive integer"
    elif not isinstance(extra.get("data_plate", DATA_PLATE), str) or not extra.get("data_plate", DATA_PLATE):
        problem = "data_plate must name the programs' plate over the batch"
    if problem:
        raise CheckpointError(f"{where}/checkpoint/state.json: {problem}")
    if extra.get("step_kind") is not None:
        extra["step_kind"] = as_step_kind(extra["step_kind"])  # older checkpoints stored on, replay, off
    return extra


def _check_position(state: dict, batches: int, epochs: int, where: Path) -> None:
    """The checkpoint's place in training — epoch, step and batch of the epoch — is one this data can reach:
    ``batches`` batches an epoch, ``epochs`` in all. Checked before a resume trains or writes anything."""
    epoch, step, index = state["epoch"], state["step"], state["extra"]["batch_index"]
    problem = None
    if epoch > epochs:
        problem = f"epoch {epoch} is beyond the run's {epochs} epochs"
    elif index > batches:
        problem = f"batch_index {index} is beyond the {batches} batches of an epoch of this data"
    elif step != epoch * batches + index:
        problem = f"step {step} is not epoch {epoch} x {batches} batches + batch_index {index}"
    if problem:
        raise CheckpointError(f"{where}/checkpoint/state.json: {problem}; refusing to resume from it")


def _step_kind(name) -> str:
    """``name`` as a step kind, or "" where it names none."""
    try:
        return as_step_kind(name) if isinstance(name, str) else ""
    except ValueError:
        return ""


def _config_of(state: dict, where: Path) -> Config:
    try:
        return from_dict(state["config"]).validate()
    except UserError as err:
        raise CheckpointError(f"{where}: the checkpoint's config is invalid: {err}") from None


def read_run_config(run_dir: str | Path) -> Config:
    """The config a run was trained with (from its checkpoint, checked)."""
    run_dir = Path(run_dir)
    return _config_of(read_state(run_dir / "checkpoint"), run_dir)


METRICS: dict[str, tuple[type, ...]] = {
    "train_objective": (int, float),
    "test_elbo": (int, float),
    "first_epoch_test_elbo": (int, float),
    "epochs": (int,),
    "seconds": (int, float),
    "sigma": (int, float),
    "likelihood": (str,),
    "prior": (str,),
    "guide": (str,),
    "model": (str,),
    "model_sha256": (str,),
    "guide_sha256": (str,),
    "latent_sites": (list,),
    "observed_sites": (list,),
    "data_plate": (str,),
    "figures_absent": (dict,),
    "latent_dim": (int,),
    "data": (str,),
    "n_train": (int,),
    "n_test": (int,),
    "parameters": (int,),
    "n_labelled": (int,),
    "step": (str,),
    "best_epoch": (int,),
    "best_val_elbo": (int, float),
    "versions": (dict,),
}
REQUIRED_METRICS = ("train_objective", "test_elbo", "epochs", "seconds", "parameters")


def versions() -> dict[str, str]:
    """``{library: version}`` of torch, pyro-ppl, arviz and ppl_vae: what a run's numbers were produced with.

    torch's includes its build (``2.14.1+cu130``). The same command with the same versions on the
    same machine gives the same numbers, bit for bit; other versions give them within float noise
    per step (README, *Reproducibility*). arviz is named without being imported (it is slow to import).
    """
    from .. import __version__

    return {
        "torch": str(torch.__version__),
        "pyro-ppl": pyro.__version__,
        "arviz": metadata.version("arviz"),
        "ppl_vae": __version__,
    }


def read_metrics(run_dir: str | Path) -> dict:
    """``metrics.json`` with every field checked (``{}`` when the run has not finished)."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    metrics = read_table(path, "metrics file", error=CheckpointError)
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} must hold a table of numbers")
    for key in REQUIRED_METRICS:
        if key not in metrics:
            raise CheckpointError(f"{path} has no {key!r}; it is not a finished run's metrics file")
    for key, value in metrics.items():
        kinds = METRICS.get(key, (int, float, str, type(None)))
        texts = (
            list(value.values()) + list(value) if isinstance(value, dict) else value if isinstance(value, list) else []
        )
        if isinstance(value, bool) or not isinstance(value, kinds) or not all(isinstance(t, str) for t in texts):
            what = {
                (int,): "an integer",
                (int, float): "a number",
                (str,): "text",
                (list,): "a list of names",
                (dict,): "a table of texts",
            }.get(kinds, "a number or text")
            raise CheckpointError(f"{path}: {key!r} must be {what}, got {value!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metrics.get("versions", {}).items()):
        raise CheckpointError(f"{path}: 'versions' must name a version (text) for each library")
    if metrics["epochs"] < 1 or not metrics["seconds"] >= 0 or metrics["parameters"] < 0:
        raise CheckpointError(f"{path}: epochs, seconds and parameters must be counts")
    return metrics


# --- checks before training --------------------------------------------------------------------


def check_latent_sites(program: Program, x: torch.Tensor) -> None:
    """Refuse a guide that does not sample its model's latent sites under the same names.

    Traced once on two rows, drawing nothing from the RNG. A model site the guide lacks is
    allowed only when the model marks it for enumeration (it is summed out, not guessed).
    """
    with rng_untouched(x), pyro.validation_enabled(False):
        guide_trace, model_trace = trace_pair(program.model, program.guide, x[:2])
    model_sites = {s["name"]: s for s in latent_sites(model_trace)}
    guide_sites = [s["name"] for s in latent_sites(guide_trace)]
    extra = [n for n in guide_sites if n not in model_sites]
    missing = [n for n, s in model_sites.items() if n not in guide_sites and not s["infer"].get("enumerate")]
    if extra or missing:
        raise UserError(
            f"the guide samples the latent sites {guide_sites} and the model {list(model_sites)}: "
            f"{'site ' + repr((extra or missing)[0]) + ' is in ' + ('the guide only' if extra else 'the model only')}; "
            "a guide must sample every latent site of its model, under the same names"
        )


def _check_inputs(config: Config, data: Dataset, device: torch.device) -> None:
    check_support(config, data)
    check_memory(
        "training",
        training_bytes(config, data.data_dim, len(data.train), torch.is_tensor(data.train)),
        device,
        "lower --particles, --batch-size or --hidden-dim",
    )


def _build_checked(config: Config, data: Dataset, programs: dict[str, ProgramFile], device: torch.device) -> Program:
    """The program, built and traced once on two training rows (its latent sites checked)."""
    program = build_program(
        config, data.data_dim, data.image_shape, init_data=data.train, num_classes=data.num_classes, programs=programs
    )
    program = program.to(device)
    if not program.takes("y"):  # a program given labels is tried with them by the trainer's trial batches
        check_params(program, data.train[:2].to(device))  # first: a foreign pyro.param would enter the store
        check_latent_sites(program, data.train[:2].to(device))
    return program


def preflight(config: Config, data: Dataset) -> None:
    """The checks :func:`fit` makes before it writes anything, without training or writing.

    A study runs them for every variant before it trains the first, so a bad variant is
    refused before any other is trained.
    """
    config = with_absolute_programs(config.validate())
    programs = read_named(config)
    device = resolve_device(config.train.device)
    _check_inputs(config, data, device)
    with program_errors(programs), torch.random.fork_rng():
        _build_checked(config, data, programs, device)


def _refuse_inputs_inside(out: Path, config: Config, programs: dict[str, ProgramFile]) -> None:
    """``--overwrite`` must not delete the data or the program the new run is made from."""
    inputs = [Path(p.path) for p in programs.values()]
    if config.data.name.endswith((".npy", ".npz")):
        inputs.append(Path(config.data.name))
    if config.data.root:
        inputs.append(Path(config.data.root))
    root = out.resolve()
    for path in inputs:
        resolved = path.resolve()
        if resolved == root or root in resolved.parents:
            raise UserError(f"--out {out} holds {path}, an input of this run; --overwrite would delete it")


def _check_disk(directory: Path, program: torch.nn.Module) -> None:
    """Refuse before training when the disk cannot hold two checkpoints (weights, Adam's moments)."""
    n = sum(t.numel() * t.element_size() for t in program.state_dict().values())
    needed = 2 * 3 * n + (4 << 20)  # two generations coexist while one is written; figures and reports
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise StorageError(
            f"{directory.parent} has {human(free)} free; this run's checkpoints need about {human(needed)}"
        )


# --- writing ----------------------------------------------------------------------------------


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
    write_csv(out / "history.csv", run.history, _history_columns(run.history))
    figures = out / "figures"
    plot_history(run.history, figures / "elbo.png")
    x = data.test[:N_FIGURE].to(run.device)
    labels = None if data.test_labels is None else data.test_labels[:N_SAMPLES]
    absent = {}  # figure -> why it is not drawn: the report says so
    no_images = (
        f"no observed site of the model holds x or some of its columns (observed sites: "
        f"{', '.join(run.metrics.get('observed_sites', [])) or 'none'})"
    )
    decodings = run.reconstruct(x, K_FIGURE, **_head(run.inputs(labels), N_FIGURE))
    if decodings is not None:
        plot_reconstructions(x, decodings, data.image_shape, figures / "reconstructions.png")
    else:
        absent["reconstructions.png"] = no_images
    samples = run.sample(N_SAMPLES, like=data.test[:N_SAMPLES], **run.inputs(labels))
    if samples is not None:
        plot_images(samples, data.image_shape, figures / "samples.png", title="Decodings of z ~ p(z)")
    else:
        absent["samples.png"] = no_images
    if run.program.takes("y") and run.num_classes:
        why = _samples_by_class(run, data.test[:SAMPLES_PER_CLASS], data.image_shape, figures / "samples_by_class.png")
        if why:
            absent["samples_by_class.png"] = why
    if absent:
        run.metrics["figures_absent"] = absent
    write_table(out / "metrics.json", run.metrics)  # last: a run with metrics.json has every output
    write_report(out)


N_SAMPLES = 32


def _head(inputs: dict, n: int) -> dict:
    return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


SAMPLES_PER_CLASS = 8


def _samples_by_class(run: Run, like: torch.Tensor, image_shape: tuple[int, ...], path: Path) -> str:
    """One row of decodings of z ~ p(z) for each class y = 0..C-1; where the program cannot, why not."""
    rows = []
    for c in range(run.num_classes):
        y = torch.full((SAMPLES_PER_CLASS,), c, dtype=torch.int64, device=run.device)
        try:
            rows.append(run.sample(SAMPLES_PER_CLASS, like=like, y=y))
        except Exception as err:  # noqa: BLE001 - a program trained without labels may not take a given y
            return f"the model given y = {c} raised {type(err).__name__}"
    if any(r is None for r in rows):
        return "no observed site of the model holds x or some of its columns"
    labels = [f"y={c}" for c in range(run.num_classes)]
    save_figure(image_grid([r.cpu() for r in rows], image_shape, labels, "x ~ p(x | y, z), z ~ p(z)"), path)
    return ""


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
    for role, program in run.programs.items():
        described[f"{role}_sha256"] = program.sha256
    if run.programs:
        x = run.dataset().test[:2].to(run.device)
        labels = run.dataset().test_labels
        with program_errors(run.programs), rng_untouched(x), pyro.validation_enabled(False):
            guide_trace, model_trace = trace_pair(
                run.program.model, run.program.guide, x, **_head(run.inputs(None if labels is None else labels[:2]), 2)
            )
        described["latent_sites"] = [
            s["name"] for s in latent_sites(model_trace) if not s["infer"].get("_deterministic")
        ]
        described["observed_sites"] = [s["name"] for s in observed_sites(model_trace)]
        described["data_plate"] = run.program.data_plate
    return described


def _absolute(spec: str) -> str:
    path, _, attr = spec.rpartition(":")
    return f"{Path(path).resolve()}:{attr}"


def with_absolute_programs(config: Config) -> Config:
    """A copy of ``config`` whose program paths are absolute, so the run finds them from anywhere.

    A copy: the caller's config is left as it was given (a study compares it with finished runs).
    """
    config = copy.deepcopy(config)
    if config.model.program:
        config.model.program = _absolute(config.model.program)
    if is_program_spec(config.guide.name):
        config.guide.name = _absolute(config.guide.name)
    return config


def _differences(a: Config, b: Config) -> list[str]:
    """``section.field`` of every option in which ``a`` and ``b`` differ."""
    return [
        f"{section}.{f.name}"
        for section in ("data", "model", "guide", "train")
        for f in dataclasses.fields(getattr(a, section))
        if getattr(getattr(a, section), f.name) != getattr(getattr(b, section), f.name)
    ]


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
    anything is written, and the run is written as a transaction (see the module's docstring).
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
        finished = _finished(_resume_plan(config, out)[1], out, trust_program)
        if finished is not None:  # nothing to write: no lock either, so a run on a read-only disk is a no-op too
            return finished
        with locked(out, "run directory"):
            return _resume(config, out, hooks, data, trust_program)
    if config is None:
        raise UserError("fit needs a config (or resume=True to continue a run)")
    config.validate()
    check_out_dir(out, overwrite)
    config = with_absolute_programs(config)
    programs = read_named(config)  # the caller named these files: importing them is its trust
    if overwrite:
        _refuse_inputs_inside(out, config, programs)
    return _train(config, out, programs, state=None, overwrite=overwrite, data=data, distributed=distributed, **hooks)


def _resume_plan(config: Config | None, out: Path) -> tuple[dict, Config]:
    """The checkpoint a resume continues from and the config it continues with, every part checked; reads only."""
    kind = kind_of(out)
    if kind != "run":
        what = {"missing": "does not exist", "file": "is a file"}.get(kind, "is not a ppl_vae run directory")
        raise UserError(f"--resume {out} {what}")
    state = read_state(out / "checkpoint")
    run_config = _config_of(state, out)
    _check_extra(state, out)
    if config is not None:
        given = with_absolute_programs(config.validate())
        changed = [d for d in _differences(run_config, given) if d not in RESUMABLE]
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


def _resume(config: Config | None, out: Path, hooks: dict, data: Dataset | None, trust: bool) -> Run:
    state, run_config = _resume_plan(config, out)  # again, now that no other writer can change it
    finished = _finished(run_config, out, trust)
    if finished is not None:
        return finished
    check_contained(out, RUN_SUBDIRS)  # before anything is written
    remove_leftovers(out, RUN_SUBDIRS)
    programs = stored_programs(out, run_config, state["extra"].get("programs"), trust)
    return _train(run_config, out, programs, state=state, overwrite=False, data=data, distributed=False, **hooks)


def _train(
    config: Config,
    out: Path,
    programs: dict[str, ProgramFile],
    *,
    state: dict | None,
    overwrite: bool,
    data: Dataset | None,
    distributed: bool,
    progress: bool,
    callbacks: list[Callable[[int, dict], None]],
) -> Run:
    device = resolve_device(config.train.device)
    data = data if data is not None else load_data(config.data)
    _check_inputs(config, data, device)
    if config.train.patience and data.val is None:
        raise UserError("--patience needs a validation split: pass --validation N (or use a data set that has one)")
    cluster = init_cluster(device) if distributed else SINGLE
    if device.type == "cuda" and cluster.world > 1:
        device = torch.device("cuda", torch.cuda.current_device())

    with program_errors(programs):
        pyro.set_rng_seed(config.train.seed)
        program = _build_checked(config, data, programs, device)
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
            programs=programs,
            num_classes=num_classes,
        )
        labels, test_labels = _labels_for(run, data, config)
        trainer = Trainer(
            program,
            config,
            data.train.to(device),
            data.test.to(device),
            labels=labels,
            test_labels=test_labels,
            name=config.model.program or (config.guide.name if is_program_spec(config.guide.name) else "the program"),
            val=None if data.val is None else data.val.to(device),
            cluster=cluster,
            step_kind=state["extra"].get("step_kind") if state is not None else None,  # a resumed run keeps its step
        )
        if state is not None:
            _check_position(state, len(trainer.batches()), config.train.epochs, out)
            state = load_checkpoint(
                out / "checkpoint", program, trainer.optimizer, restore_rng=True, device=str(device)
            )
            extra = state["extra"]
            trainer.epoch, trainer.step = state["epoch"], state["step"]
            trainer.batch_index, trainer.epoch_loss = extra["batch_index"], extra["epoch_loss"]
            trainer.history = extra["history"]
            run.checkpoint = {"epoch": state["epoch"], "step": state["step"]}
        if cluster.is_main:  # once every input, the checkpoint's tensors included, has been checked
            log.info(trainer.step_reason)
        trainer.progress, trainer.callbacks = progress, callbacks
        if not cluster.is_main:  # a rank other than 0 trains its shard and writes nothing
            trainer.fit()
            run.history = trainer.history
            return run
        created = make_parents(out) if state is None else []  # the lock file lives beside out
        try:
            with locked(out, "--out") if state is None else contextlib.nullcontext():
                if state is None:
                    check_out_dir(out, overwrite)  # again, now that no other writer can change it
                    remove_leftovers(out, RUN_SUBDIRS)
                return _transaction(out, run, trainer, programs, data, state is not None)
        finally:
            if not out.exists():
                remove_created(created)


def _transaction(out: Path, run: Run, trainer: Trainer, programs, data: Dataset, resumed: bool) -> Run:
    """Train into a :class:`_Target`; on any failure before the first checkpoint, leave nothing."""
    target = _Target(out, fresh=not resumed)
    try:
        _check_disk(target.dir, run.program)
        return _train_into(target, run, trainer, programs, data, resumed)
    except TrainingDiverged as err:
        target.abort()
        if target.committed:
            raise
        kept = f"{out} is as it was" if target.existed else "nothing was written"
        raise TrainingDiverged(
            f"{str(err).split(';')[0]}; training stopped before its first checkpoint: {kept}"
        ) from None
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


def _train_into(target: _Target, run: Run, trainer: Trainer, programs, data: Dataset, resumed: bool) -> Run:
    config = run.config
    write_text(target.dir / "config.toml", to_toml(config))
    if not resumed:
        store(programs, target.dir)
    extra_fixed = {
        "data_dim": data.data_dim,
        "image_shape": list(data.image_shape),
        "num_classes": run.num_classes,
        "data_plate": run.program.data_plate,  # found by the trial (or named with --data-plate)
    }
    if programs:
        extra_fixed["programs"] = record_of(programs)

    def checkpoint(t: Trainer) -> None:
        save_checkpoint(
            target.dir / "checkpoint",
            run.program,
            t.optimizer,
            epoch=t.epoch,
            step=t.step,
            config=config.to_dict(),
            extra={
                "step_kind": t.step_kind,
                "batch_index": t.batch_index,
                "epoch_loss": t.epoch_loss,
                "history": t.history,
                **extra_fixed,
            },
        )
        target.commit()  # the first checkpoint puts the new run in out's place
        run.checkpoint = {"epoch": t.epoch, "step": t.step}

    def on_epoch(t: Trainer) -> None:
        write_csv(target.dir / "history.csv", t.history, _history_columns(t.history))
        if config.train.patience and t.best_epoch() == t.epoch:  # before the checkpoint: a resume finds it
            save_checkpoint(target.dir / "best", run.program, None, epoch=t.epoch, step=t.step, config=config.to_dict())
        if t.epoch % config.train.checkpoint_every == 0 or t.epoch == config.train.epochs or t.stopped_early():
            checkpoint(t)

    every = config.train.checkpoint_steps
    trainer.on_epoch = on_epoch
    trainer.on_step = (lambda t: checkpoint(t) if t.step % every == 0 else None) if every else None
    trainer.on_interrupt = checkpoint
    start = time.perf_counter()
    trainer.fit()
    if not target.committed:  # nothing left to train (a resume killed after its last checkpoint)
        checkpoint(trainer)
    seconds = sum(row["seconds"] for row in trainer.history) if resumed else time.perf_counter() - start
    run.history = trainer.history
    run.step_kind = trainer.step_kind
    if config.train.patience:
        # the run ends with the best validation epoch's weights, in the checkpoint that load() reads too
        load_checkpoint(target.dir / "best", run.program, device=str(run.device))
        checkpoint(trainer)
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


def load(run_dir: str | Path, device: str = "auto", trust_program: bool = False) -> Run:
    """Load a run directory: the program with its weights and buffers, and its numbers.

    The checkpoint's own ``state.json`` holds the config the weights were trained with, so a
    run directory is self-contained; nothing is unpickled. A run made from a user's program
    imports the run's stored copy of it only with ``trust_program=True`` (and only when its
    sha256 is the recorded one); a run of built-in programs imports nothing but ppl_vae.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    checkpoint = read_checkpoint(run_dir / "checkpoint")
    state = checkpoint[0]
    config = _config_of(state, run_dir)
    extra = _check_extra(state, run_dir)
    programs = stored_programs(run_dir, config, extra.get("programs"), trust_program)
    metrics = read_metrics(run_dir)
    dev = resolve_device(device)
    with program_errors(programs):
        program = build_program(
            config,
            extra["data_dim"],
            tuple(extra["image_shape"]),
            num_classes=extra.get("num_classes"),
            programs=programs,
        ).to(dev)
    load_checkpoint(run_dir / "checkpoint", program, device=str(dev), checkpoint=checkpoint)
    program.data_plate = extra.get("data_plate", DATA_PLATE)
    program.eval()
    return Run(
        run_dir,
        config,
        program,
        extra["data_dim"],
        tuple(extra["image_shape"]),
        metrics=metrics,
        history=extra["history"],
        checkpoint={"epoch": state["epoch"], "step": state["step"]},
        programs=programs,
        step_kind=extra.get("step_kind") or "",
        num_classes=extra.get("num_classes"),
    )
