"""A run: fit a program to data and leave a directory with everything needed to use it again.

::

    RUN_DIR/
      config.toml        resolved configuration
      checkpoint/        weights, buffers, optimizer and RNG states (safetensors + JSON)
      best/              with early stopping (train.patience): the best validation epoch's weights
      metrics.json       final numbers (nats per datapoint)
      history.csv        one row an epoch
      figures/           elbo.png, reconstructions.png, samples.png (samples_by_class.png for programs taking y)
      report.md/.html    the numbers and pictures
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from ..config import Config, from_dict, is_program_spec, to_toml
from ..data.datasets import Dataset, load_data
from ..errors import CheckpointError, UserError
from ..inference.distributed import SINGLE, init_cluster
from ..inference.predictive import prior_decode, reconstruct
from ..inference.trainer import Trainer
from ..plots.figures import image_grid, plot_history, plot_images, plot_reconstructions, save_figure
from ..storage.atomic import write_csv, write_json, write_text
from ..storage.checkpoint import load_checkpoint, read_state, save_checkpoint
from .build import Program, build_program, check_support
from .report import write_report

__all__ = ["Run", "fit", "load", "check_out_dir", "resolve_device"]

N_FIGURE = 10  # test images shown in reconstructions.png
K_FIGURE = 4  # decodings of z ~ q(z|x) shown below each


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


def check_out_dir(out: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse to touch an existing, non-empty directory unless told to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise UserError(f"--out {out} already exists and is not empty; pass --overwrite to replace it")
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
    step_kind: str = ""  # the training step fit() took: compiled or eager
    num_classes: int | None = None

    @property
    def device(self) -> torch.device:
        return next(self.program.parameters()).device

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
        return reconstruct(self.program.model, self.program.guide, x.to(self.device), num_particles, **inputs)

    def sample(self, n: int, like: torch.Tensor | None = None, **inputs) -> torch.Tensor | None:
        """Decodings of n draws z ~ p(z): ``(n, D)``, given ``inputs`` (``y`` ``(n,)``) and rows ``like`` (a given
        quadrant: what the model conditions on); ``None`` if no observed site holds x."""
        like = None if like is None else like.to(self.device)
        return prior_decode(self.program.model, n, self.data_dim, self.device, like=like, **inputs)

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


def _write_outputs(run: Run, seconds: float, first_test_elbo: float, best_epoch: int | None) -> None:
    data, cfg, out = run.dataset(), run.config, run.path
    last = run.history[-1]
    run.metrics = {
        "train_objective": last["train_objective"],
        "test_elbo": last["test_elbo"],
        "first_epoch_test_elbo": first_test_elbo,
        "epochs": last["epoch"],
        "seconds": seconds,
        "sigma": cfg.model.sigma,
        "likelihood": cfg.model.likelihood if not cfg.model.program else cfg.model.program,
        "prior": cfg.model.prior,
        "guide": cfg.guide.name,
        "latent_dim": cfg.model.latent_dim,
        "data": data.name,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "n_labelled": 0 if data.labelled is None else len(data.labelled),
        "parameters": sum(p.numel() for p in run.program.parameters()),
        "step": run.step_kind,  # compiled or eager; why is printed when training starts
    }
    if best_epoch is not None:  # a validation split: its best epoch (the weights kept with early stopping)
        run.metrics["best_epoch"] = best_epoch
        run.metrics["best_val_elbo"] = run.history[best_epoch - 1]["val_elbo"]
    write_json(out / "metrics.json", run.metrics)
    write_csv(out / "history.csv", run.history)
    figures = out / "figures"
    plot_history(run.history, figures / "elbo.png")
    x = data.test[:N_FIGURE].to(run.device)
    labels = None if data.test_labels is None else data.test_labels[:N_SAMPLES]
    decodings = run.reconstruct(x, K_FIGURE, **_head(run.inputs(labels), N_FIGURE))
    if decodings is not None:
        plot_reconstructions(x, decodings, data.image_shape, figures / "reconstructions.png")
    samples = run.sample(N_SAMPLES, like=data.test[:N_SAMPLES], **run.inputs(labels))
    if samples is not None:
        plot_images(samples, data.image_shape, figures / "samples.png")
    if run.program.takes("y") and run.num_classes:
        _samples_by_class(run, data.test[:SAMPLES_PER_CLASS], data.image_shape, figures / "samples_by_class.png")
    write_report(out)


N_SAMPLES = 32


def _head(inputs: dict, n: int) -> dict:
    return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


SAMPLES_PER_CLASS = 8


def _samples_by_class(run: Run, like: torch.Tensor, image_shape: tuple[int, ...], path: Path) -> None:
    """One row of decodings of z ~ p(z) for each class y = 0..C-1 (a picture: skipped if the program cannot)."""
    rows = []
    for c in range(run.num_classes):
        y = torch.full((SAMPLES_PER_CLASS,), c, dtype=torch.int64, device=run.device)
        try:
            rows.append(run.sample(SAMPLES_PER_CLASS, like=like, y=y))
        except Exception:  # noqa: BLE001 - a program trained without labels may not take a given y
            return
    if any(r is None for r in rows):
        return
    labels = [f"y={c}" for c in range(run.num_classes)]
    save_figure(image_grid([r.cpu() for r in rows], image_shape, labels, "x ~ p(x | y, z), z ~ p(z)"), path)


def _absolute(spec: str) -> str:
    path, _, attr = spec.rpartition(":")
    return f"{Path(path).resolve()}:{attr}"


def _with_absolute_programs(config: Config) -> Config:
    """A copy of ``config`` whose program paths are absolute, so the run finds them from anywhere.

    A copy: the caller's config is left as it was given (a study compares it with finished runs).
    """
    config = copy.deepcopy(config)
    if config.model.program:
        config.model.program = _absolute(config.model.program)
    if is_program_spec(config.guide.name):
        config.guide.name = _absolute(config.guide.name)
    return config


def fit(
    config: Config,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    distributed: bool = False,
) -> Run:
    """Train the program ``config`` describes and write a run directory at ``out``.

    Everything is validated (config, data, the output directory) before anything is written.
    With ``resume=True``, training continues from ``out/checkpoint`` with the same data order
    and RNG states, so the result equals an uninterrupted run. With ``distributed=True`` (under
    torchrun) every rank trains its shard of each batch with DDP and rank 0 writes the run.
    """
    out = check_out_dir(out, overwrite, resume)
    if resume:
        state = read_state(out / "checkpoint")
        config = from_dict(state["config"])
    config.validate()
    config = _with_absolute_programs(config)
    device = resolve_device(config.train.device)
    if distributed and resume:
        raise UserError(
            "--resume continues single-process runs; a distributed run restarts from its last checkpoint by hand"
        )
    data = data if data is not None else load_data(config.data)
    check_support(config, data)
    if config.train.patience and data.val is None:
        raise UserError("--patience needs a validation split: pass --validation N (or use a data set that has one)")

    cluster = init_cluster(device) if distributed else SINGLE
    if device.type == "cuda" and cluster.world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    pyro.set_rng_seed(config.train.seed)
    num_classes = data.num_classes
    program = build_program(config, data.data_dim, data.image_shape, init_data=data.train, num_classes=num_classes).to(
        device
    )
    if cluster.world > 1:
        pyro.set_rng_seed(config.train.seed + cluster.rank)  # each rank its own Monte Carlo noise
    run = Run(out, config, program, data.data_dim, tuple(data.image_shape), data=data, num_classes=num_classes)
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
        step_kind=state["extra"].get("step_kind") if resume else None,  # a resumed run keeps its step
    )
    if progress and cluster.is_main:
        print(f"ppl-vae: {trainer.step_reason}", file=sys.stderr)
    if resume:
        state = load_checkpoint(out / "checkpoint", program, trainer.optimizer, restore_rng=True, device=str(device))
        extra = state["extra"]
        trainer.epoch, trainer.step = state["epoch"], state["step"]
        trainer.batch_index, trainer.epoch_loss = extra["batch_index"], extra["epoch_loss"]
        trainer.history = extra["history"]
    elif out.exists() and overwrite and cluster.is_main:
        shutil.rmtree(out)
    if cluster.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.toml", to_toml(config))

    def checkpoint(t: Trainer) -> None:
        if not cluster.is_main:
            return
        save_checkpoint(
            out / "checkpoint",
            program,
            t.optimizer,
            epoch=t.epoch,
            step=t.step,
            config=config.to_dict(),
            extra={
                "step_kind": t.step_kind,
                "batch_index": t.batch_index,
                "epoch_loss": t.epoch_loss,
                "history": t.history,
                "data_dim": data.data_dim,
                "image_shape": list(data.image_shape),
                "num_classes": num_classes,
            },
        )

    def on_epoch(t: Trainer) -> None:
        if not cluster.is_main:
            return
        write_csv(out / "history.csv", t.history)
        if config.train.patience and t.best_epoch() == t.epoch:  # before the checkpoint: a resume finds it
            save_checkpoint(out / "best", program, None, epoch=t.epoch, step=t.step, config=config.to_dict())
        if t.epoch % config.train.checkpoint_every == 0 or t.epoch == config.train.epochs or t.stopped_early():
            checkpoint(t)

    every = config.train.checkpoint_steps
    trainer.on_epoch = on_epoch
    trainer.on_step = (lambda t: checkpoint(t) if t.step % every == 0 else None) if every else None
    trainer.on_interrupt = checkpoint
    trainer.progress = progress
    start = time.perf_counter()
    trainer.fit()
    seconds = sum(row["seconds"] for row in trainer.history) if resume else time.perf_counter() - start
    run.history = trainer.history
    run.step_kind = "compiled" if trainer.compiled is not None else "eager"
    if config.train.patience and cluster.is_main:
        # the run ends with the best validation epoch's weights, in the checkpoint that load() reads too
        load_checkpoint(out / "best", program, device=str(device))
        checkpoint(trainer)
    if cluster.is_main:
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


def load(run_dir: str | Path, device: str = "auto") -> Run:
    """Load a run directory: the program with its weights and buffers, and its numbers.

    The checkpoint's own ``state.json`` holds the config the weights were trained with, so a
    run directory is self-contained; nothing is unpickled.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    state = read_state(run_dir / "checkpoint")
    try:
        config = from_dict(state["config"]).validate()
    except UserError as err:
        raise CheckpointError(f"{run_dir}: the checkpoint's config is invalid: {err}") from None
    dev = resolve_device(device)
    data_dim, image_shape = state["extra"].get("data_dim"), state["extra"].get("image_shape")
    if (
        not isinstance(data_dim, int)
        or not isinstance(image_shape, list)
        or not all(isinstance(s, int) for s in image_shape)
    ):
        raise CheckpointError(f"{run_dir}: the checkpoint does not record the data shape")
    num_classes = state["extra"].get("num_classes")
    if num_classes is not None and not isinstance(num_classes, int):
        raise CheckpointError(f"{run_dir}: the checkpoint's num_classes is not a number")
    program = build_program(config, data_dim, tuple(image_shape), num_classes=num_classes).to(dev)
    load_checkpoint(run_dir / "checkpoint", program, device=str(dev))
    program.eval()
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    return Run(
        run_dir,
        config,
        program,
        data_dim,
        tuple(image_shape),
        metrics=metrics,
        history=state["extra"].get("history", []),
        num_classes=num_classes,
    )
