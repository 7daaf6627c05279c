"""Stochastic variational inference on in-memory minibatches.

Each epoch draws one permutation of the training rows (from a generator seeded by the run
seed and the epoch, so a resumed run sees the same order), slices minibatches off it and
takes one optimizer step on the chosen objective, with the minibatch scaled to the data set
by ``poutine.scale(N / B)``. The reported ELBOs are per datapoint, so they compare across
batch sizes.

With a validation split, every epoch also records the validation ELBO (β = 1), and with
``patience`` training stops once it has not improved for that many epochs after the β
warm-up (the VampPrior paper's protocol, Tomczak & Welling 2018, arXiv:1705.07120). The
decision reads the history alone, so a resumed run stops where the original would have.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyro
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .compiled import CompiledStep
from .distributed import SINGLE, Cluster, ProgramLoss
from .importance import log_weights, max_plate_nesting
from .objectives import Objective
from .schedules import ANNEALING, LR_SCHEDULES

if TYPE_CHECKING:  # the config layer sits above this one: read by attribute, imported for types only
    from ..config import Config

__all__ = ["Trainer", "TrainingDiverged", "Interrupted", "epoch_permutation", "elbo_per_datapoint"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written at the step boundary."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def epoch_permutation(n: int, seed: int, epoch: int, device="cpu") -> torch.Tensor:
    """The training order of ``epoch``: a function of (seed, epoch) alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


@torch.no_grad()
def elbo_per_datapoint(
    program, x: torch.Tensor, batch_size: int = 1024, num_particles: int = 1, nesting: int | None = None
) -> torch.Tensor:
    """Monte Carlo ELBO of each row of ``x``: ``(N,)``, from the shared log-weights.

    ``nesting`` is the pair's plate nesting, when known.
    """
    if nesting is None:
        nesting = max_plate_nesting(program.model, program.guide, x[:batch_size])
    parts = [
        log_weights(program.model, program.guide, xb, num_particles, nesting).total.mean(0)
        for xb in x.split(batch_size)
    ]
    return torch.cat(parts)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Dynamic binarization, ``x ~ Bernoulli(pixel)`` elementwise, from one uniform draw."""
    return (torch.rand_like(x) < x).to(x.dtype)


@dataclass
class Trainer:
    """Fits ``program`` to ``train`` with the objective and schedule of ``config``.

    ``on_epoch(trainer)`` is called after each epoch and ``on_step(trainer)`` after each
    step (checkpointing); ``history`` holds one dict a completed epoch. The counters are
    everything a checkpoint needs to resume mid-epoch with the same data order.
    """

    program: torch.nn.Module
    config: Config
    train: torch.Tensor
    test: torch.Tensor
    val: torch.Tensor | None = None  # a validation split: its ELBO each epoch, for early stopping
    on_epoch: Callable[[Trainer], None] | None = None
    on_step: Callable[[Trainer], None] | None = None
    on_interrupt: Callable[[Trainer], None] | None = None
    progress: bool = True
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_index: int = 0  # batches of the current epoch already taken
    epoch_loss: float = 0.0  # their running objective sum
    cluster: Cluster = SINGLE  # this process's place among data-parallel ranks
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        t = self.config.train
        self.objective = Objective(t.elbo, t.particles)
        if t.compile and self.cluster.world > 1:
            raise UserError("--compile trains one process; DDP needs the eager step (drop --compile or --distributed)")
        self.loss = self.cluster.wrap(ProgramLoss(self.program, self.objective), self.train.device)
        self.compiled = CompiledStep(self.program, self.objective) if t.compile else None
        if self.compiled is not None:
            self.compiled.check(self.train)  # a program that cannot be recorded is refused before anything is written
        # one fused kernel for all parameters instead of a dozen small ops per tensor
        fused = self.train.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(self.program.parameters(), lr=t.lr, fused=fused)
        self._schedule = ANNEALING[t.anneal]  # names were checked by Config.validate()
        self._lr = LR_SCHEDULES[t.lr_schedule]
        self._signal: int | None = None

    def beta(self, epoch_fraction: float) -> float:
        t = self.config.train
        return self._schedule(t.beta, epoch_fraction, t.anneal_epochs)

    def lr(self, epoch_fraction: float) -> float:
        t = self.config.train
        return self._lr(t.lr, t.lr_final, epoch_fraction / t.epochs)

    def _nesting(self) -> int:
        return self.objective.nesting(self.program.model, self.program.guide, self.train[:2])

    def run_epoch(self) -> dict:
        """Finish the current epoch (from ``batch_index`` on, after a resume) and return its row."""
        t, n = self.config.train, len(self.train)
        start = time.perf_counter()
        batches = epoch_permutation(n, t.seed, self.epoch, self.train.device).split(t.batch_size)
        with pyro.validation_enabled(t.pyro_validation):
            self._steps(batches)
        row = {
            "epoch": self.epoch + 1,
            "train_objective": -self.cluster.sum(self.epoch_loss) / n,
            "test_elbo": elbo_per_datapoint(self.program, self.test, nesting=self._nesting()).mean().item(),
            "beta": self.beta(self.epoch + 1),
            "seconds": time.perf_counter() - start,
        }
        if self.val is not None:
            row["val_elbo"] = elbo_per_datapoint(self.program, self.val, nesting=self._nesting()).mean().item()
        self.epoch, self.batch_index, self.epoch_loss = self.epoch + 1, 0, 0.0
        return row

    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the highest validation ELBO so far; None without a validation split."""
        scores = [row.get("val_elbo", -math.inf) for row in self.history]
        if self.val is None or not scores:
            return None
        return max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1  # the first of equal scores

    def stopped_early(self) -> bool:
        """Whether ``patience`` epochs after the warm-up have passed without a better validation ELBO."""
        t, best = self.config.train, self.best_epoch()
        if not t.patience or best is None:
            return False
        warm_up = t.anneal_epochs if t.anneal != "none" else 0
        return self.epoch - max(best, warm_up) >= t.patience

    def _steps(self, batches) -> None:
        t, n, world = self.config.train, len(self.train), self.cluster.world
        bar = tqdm(
            total=len(batches),
            initial=self.batch_index,
            desc=f"epoch {self.epoch + 1}/{t.epochs}",
            leave=False,
            disable=not self.progress,
        )
        with bar:  # closed however the epoch ends: divergence and interruption included
            for i in range(self.batch_index, len(batches)):
                x = self.train[self.cluster.shard(batches[i])]
                if self.config.data.binarize:
                    x = binarize(x)
                # N·W/B: on one process N/B; across W ranks DDP's average restores the union batch's gradient
                scale = n * world / len(batches[i])
                progress = self.epoch + i / len(batches)  # in epochs
                value = self._loss_and_grads(x, scale, self.beta(progress))
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"the loss became {value} at epoch {self.epoch + 1}, step {i + 1}; "
                        "training stopped, the last good checkpoint is kept"
                    )
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr(progress)
                self.optimizer.step()
                self.step += 1
                self.batch_index = i + 1
                self.epoch_loss += value / scale  # Σ_i of this rank's per-datapoint objective
                bar.update()
                if self.on_step is not None:
                    self.on_step(self)
                if self._signal is not None:
                    if self.on_interrupt is not None:
                        self.on_interrupt(self)
                    raise Interrupted(self._signal)

    def _loss_and_grads(self, x: torch.Tensor, scale: float, beta: float) -> float:
        """The objective's value on ``x``, with its gradient left in the parameters' ``.grad``."""
        if self.compiled is not None:
            return self.compiled(x, scale, beta).item()
        loss = self.loss(x, scale, beta)
        value = loss.item()
        if math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        return value

    def fit(self) -> list[dict]:
        t = self.config.train
        check = self.train[: min(2, len(self.train))]
        with pyro.validation_enabled(True):  # shape and support errors surface here, once
            self.objective.check(self.program.model, self.program.guide, check)
        previous = (
            {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        )
        try:
            with (
                warnings.catch_warnings(),
                tqdm(total=t.epochs, initial=self.epoch, desc="training", disable=not self.progress) as bar,
            ):
                # a non-finite loss is reported once, as TrainingDiverged, not also as Pyro's warning
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                while self.epoch < t.epochs and not self.stopped_early():
                    row = self.run_epoch()
                    self.history.append(row)
                    bar.update()
                    bar.set_postfix(train=f"{row['train_objective']:.2f}", test=f"{row['test_elbo']:.2f}")
                    if self.on_epoch is not None:
                        self.on_epoch(self)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.history

    def _on_signal(self, signum, frame):
        self._signal = signum


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
