r"""Stochastic variational inference on in-memory minibatches.

Each epoch draws one permutation of the training rows (from a generator seeded by the run
seed and the epoch, so a resumed run sees the same order), slices minibatches off it and
takes one optimizer step on the chosen objective, with the minibatch scaled to the data set
by ``poutine.scale(N / B)``. The reported ELBOs are per datapoint, so they compare across
batch sizes.

The optimizer steps the parameters of the program's modules; the programs' ``pyro.module``
statements are answered with those tensors (:mod:`ppl_vae.inference.params`), so training
leaves Pyro's global param store alone, and ``pyro.infer.SVI`` on the same program and
minibatches steps the same tensors.

With labels for part of the training set (semi-supervised, Kingma et al. 2014,
arXiv:1406.5298), each epoch permutes the labelled and the unlabelled points separately and
interleaves their batches evenly; a batch is all-labelled (the program gets ``y``, class
indices ``(B,)``) or all-unlabelled (``y=None``). Of an epoch's M batches, :math:`M_l` are
labelled and :math:`M_u` unlabelled, and a batch is scaled so that a step taken at a batch
drawn uniformly from the M is unbiased for the whole objective,

.. math::

    \mathcal J = \frac{M}{M_l} \frac{N_l}{B} \sum_{i \in \text{labelled batch}} \mathcal L(x_i, y_i)
    \quad\text{or}\quad \frac{M}{M_u} \frac{N_u}{B} \sum_{i \in \text{unlabelled batch}} \mathcal U(x_i),
    \qquad \mathbb E\, \mathcal J = \sum_l \mathcal L + \sum_u \mathcal U,

which is N/B for every batch when B divides both parts: the labelled and the unlabelled points
weigh what they weigh in the sum, as in Kingma et al.'s mixed batches and Pyro's
``ss_vae_M2.py``. (Scaling a batch to its own part alone, :math:`N_l/B`, would weigh the labelled
term by :math:`M_l/M` of its share: 1/20 of it for 3000 labels of MNIST's 60000.) Every point
is visited once an epoch.

Before anything is written, :func:`~ppl_vae.inference.trial.check_program` runs the program on
a trial batch of each kind the run will feed it.

With a validation split, every epoch also records the validation ELBO (β = 1), and with
``patience`` training stops once it has not improved for that many epochs after the β
warm-up (the VampPrior paper's protocol, Tomczak & Welling 2018, arXiv:1705.07120). The
decision reads the history alone, so a resumed run stops where the original would have.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyro
import torch
from tqdm.auto import tqdm

from ..contracts import rows_of
from ..errors import UserError
from .compiled import as_step_kind, choose_step
from .distributed import SINGLE, Cluster, ProgramLoss
from .importance import log_weights, max_plate_nesting
from .objectives import Objective
from .optimizers import OPTIMIZERS
from .schedules import ANNEALING, LR_SCHEDULES
from .trial import check_params, check_program

log = logging.getLogger(__name__)

__all__ = [
    "check_params",
    "TrainSettings",
    "Trainer",
    "TrainingDiverged",
    "Interrupted",
    "epoch_permutation",
    "epoch_batches",
    "elbo_per_datapoint",
]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


GRACE_SECONDS = 10.0
"""How long the step under way may take after a first SIGINT/SIGTERM before training stops without it."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived: a checkpoint was written at the step boundary, or (``forced``) a second signal,
    or a step still running :data:`GRACE_SECONDS` after the first, stopped training at once.

    A ``BaseException``, as ``KeyboardInterrupt`` is: a program's own ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int, forced: str = "", message: str = ""):
        super().__init__(message or f"interrupted by signal {signum}" + (f" ({forced})" if forced else ""))
        self.signum, self.forced = signum, forced

    def __reduce__(self):  # whole across processes: a study's worker reports it to the parent
        return type(self), (self.signum, self.forced, str(self))


def epoch_permutation(n: int, seed: int, epoch: int, device="cpu") -> torch.Tensor:
    """The training order of ``epoch``: a function of (seed, epoch) alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, labelled: torch.Tensor | None = None, device="cpu"
) -> list[tuple[torch.Tensor, bool]]:
    """The batches of ``epoch``, ``(row indices, labelled?)``: a function of (seed, epoch, the labelled rows) alone.

    Without labelled rows, the slices of :func:`epoch_permutation`. With them (a bool mask
    ``(n,)``), the labelled and the unlabelled rows are permuted separately (each a sub-order
    of the epoch's permutation) and their batches interleaved evenly.
    """
    if labelled is None or not bool(labelled.any()):
        return [(idx, False) for idx in epoch_permutation(n, seed, epoch, device).split(batch_size)]
    order = epoch_permutation(n, seed, epoch)
    is_labelled = labelled.cpu()[order]
    parts = {
        kind: rows.split(batch_size) if len(rows) else ()
        for kind, rows in ((True, order[is_labelled]), (False, order[~is_labelled]))
    }
    keyed = [((j + 0.5) / len(batches), kind, idx) for kind, batches in parts.items() for j, idx in enumerate(batches)]
    keyed.sort(key=lambda item: (item[0], not item[1]))
    return [(idx.to(device), kind) for _, kind, idx in keyed]


@torch.no_grad()
def elbo_per_datapoint(
    program, x: torch.Tensor, batch_size: int = 1024, num_particles: int = 1, nesting: int | None = None, **inputs
) -> torch.Tensor:
    """Monte Carlo ELBO of each row of ``x``: ``(N,)``, from the shared log-weights.

    ``nesting`` is the pair's plate nesting, when known; ``inputs`` the rows' inputs (labels ``y``, or ``y=None``).
    """
    if nesting is None:
        nesting = max_plate_nesting(
            program.model, program.guide, x[:batch_size], **rows_of(inputs, slice(0, batch_size))
        )
    parts = [
        log_weights(
            program.model, program.guide, xb, num_particles, nesting, **rows_of(inputs, slice(i, i + len(xb)))
        ).elbo.mean(0)
        for i, xb in zip(range(0, len(x), batch_size), x.split(batch_size))
    ]
    return torch.cat(parts)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Dynamic binarization, ``x ~ Bernoulli(pixel)`` elementwise, from one uniform draw."""
    return (torch.rand_like(x) < x).to(x.dtype)


class TrainSettings(Protocol):
    """The options a :class:`Trainer` reads: the ``[train]`` section of a run's config (``TrainConfig``
    has them all; what each means is written there) or any object with these attributes."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # a name of OPTIMIZERS
    lr_schedule: str  # a name of LR_SCHEDULES
    lr_final: float
    seed: int
    elbo: str  # a name of ELBOS
    particles: int
    beta: float
    anneal: str  # a name of ANNEALING
    anneal_epochs: int
    compile: str  # auto, on or off
    patience: int
    min_epochs: int
    pyro_validation: bool


@dataclass
class Trainer:
    """Fits ``program`` to ``train`` with the objective and schedule of ``settings`` (a run's ``config.train``).

    ``binarize`` re-binarizes each training batch (``x ~ Bernoulli(pixel)``); ``data_plate``
    names the programs' plate over the batch (``""``: the trial finds it).

    Its hooks: ``on_epoch(trainer)`` is called after each epoch, ``on_step(trainer)`` after each
    step (checkpointing) and ``on_interrupt(trainer)`` at the step boundary after a first signal;
    each of ``callbacks`` as ``f(epoch, row)`` after ``on_epoch``. ``history`` holds one dict a
    completed epoch. The counters (``epoch``, ``step``, ``batch_index``, ``epoch_loss``,
    ``history``, ``step_kind``) are everything a checkpoint needs to resume mid-epoch with the
    same data order: a resumed run passes the restored ones here.

    ``labels`` ``(N,)`` int64 are the training labels the program sees (-1: unlabelled), or
    ``None`` for a program that gets no ``y``; ``test_labels`` are passed with the test rows
    (a program conditioned on y), else the test rows are unlabelled. ``name`` names the
    program in refusals.
    """

    program: torch.nn.Module
    settings: TrainSettings
    train: torch.Tensor
    test: torch.Tensor
    labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    name: str = "the program"
    val: torch.Tensor | None = None  # a validation split: its ELBO each epoch, for early stopping
    binarize: bool = False  # dynamic binarization of the training rows
    data_plate: str = ""  # the programs' plate over the batch ("" = found by the trial)
    on_epoch: Callable[[Trainer], None] | None = None
    on_step: Callable[[Trainer], None] | None = None
    on_interrupt: Callable[[Trainer], None] | None = None
    callbacks: list[Callable[[int, dict], None]] = field(default_factory=list)  # f(epoch, row) after on_epoch
    progress: bool = True
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_index: int = 0  # batches of the current epoch already taken
    epoch_loss: float = 0.0  # their running objective sum
    cluster: Cluster = SINGLE  # this process's place among data-parallel ranks
    history: list[dict] = field(default_factory=list)
    step_kind: str | None = None  # eager, replayed or compiled once chosen; a resumed run keeps it

    def __post_init__(self):
        t = self.settings
        self.objective = Objective(t.elbo, t.particles)
        if t.compile == "on" and self.cluster.world > 1:
            raise UserError("--compile trains one process; DDP needs the eager step (drop --compile or --distributed)")
        if self.val is not None and self.test_labels is not None:
            raise UserError(
                "a program conditioned on labels (--labels all) cannot be validated: its validation rows have none"
            )
        self._labelled = None if self.labels is None else self.labels >= 0
        self.n_labelled = 0 if self._labelled is None else int(self._labelled.sum())
        self._check_params()
        beta = t.beta if t.anneal == "none" else 0.5  # annealing: β other than 1, whatever β is
        self.nesting = check_program(
            self.program, self.objective, self.trial_batches(), self.name, beta, self.data_plate
        )
        self.loss = self.cluster.wrap(ProgramLoss(self.program, self.objective), self.train.device)
        # a program that cannot be recorded is refused (--compile) or trained eagerly (auto) before anything is written;
        # the choice reads the config and the data's shape, never a clock: the same command takes the same step
        kept = self.step_kind is not None
        steps = t.epochs * -(-len(self.train) // t.batch_size)  # the whole run's, so a resume decides as its start did
        if self.cluster.world > 1:
            self.compiled, self.step_kind, self.step_reason = (
                None,
                "eager",
                "eager step (several processes train eagerly)",
            )
        else:
            mode = as_step_kind(self.step_kind) if kept else "auto" if t.compile == "auto" else as_step_kind(t.compile)
            rows = min(t.batch_size, len(self.train))  # the one shape compiled: a ragged last batch is replayed
            self.compiled, self.step_kind, self.step_reason = choose_step(
                self.program, self.objective, self._step_trials(), steps, mode, t.compile == "on", rows
            )
        if kept:
            self.step_reason = f"{self.step_kind} step, as when the run started"
        self.optimizer = OPTIMIZERS[t.optimizer](self.program.parameters(), t.lr)
        self._schedule = ANNEALING[t.anneal]  # names were checked by Config.validate()
        self._lr = LR_SCHEDULES[t.lr_schedule]
        self._signal: int | None = None

    def _step_trials(self) -> list[tuple[torch.Tensor, dict]]:
        """A batch ``(x, inputs)`` of each kind the training step meets: labelled, unlabelled (or plain)."""
        if self.labels is None:
            return [(self.train[: self.settings.batch_size], {})]
        return [(x, inputs) for kind, x, inputs in self.trial_batches() if kind in ("labelled", "unlabelled")]

    def _check_params(self) -> None:
        _, x, inputs = self.trial_batches()[0]
        check_params(self.program, x, **inputs)

    def beta(self, epoch_fraction: float) -> float:
        t = self.settings
        return self._schedule(t.beta, epoch_fraction, t.anneal_epochs)

    def lr(self, epoch_fraction: float) -> float:
        t = self.settings
        return self._lr(t.lr, t.lr_final, epoch_fraction / t.epochs)

    def _inputs(self, idx: torch.Tensor, labelled: bool) -> dict:
        """What the program gets beside x for the rows ``idx``: ``y`` for a labelled batch, ``y=None`` otherwise."""
        if self.labels is None:
            return {}
        return {"y": self.labels[idx.to(self.labels.device)].to(self.train.device) if labelled else None}

    def test_inputs(self) -> dict:
        """The inputs of the test rows: their labels for a program conditioned on y, else ``y=None``."""
        if self.test_labels is not None:
            return {"y": self.test_labels.to(self.test.device)}
        return {} if self.labels is None else {"y": None}

    def trial_batches(self) -> list[tuple[str, torch.Tensor, dict]]:
        """Two rows of each kind of batch this run feeds the program: labelled, unlabelled, test."""
        binary = self.binarize
        rows = lambda x, idx: (x[idx] > 0.5).to(x.dtype) if binary else x[idx]  # binarized without drawing
        batches = []
        if self.n_labelled:
            idx = self._labelled.nonzero().flatten()[:2]
            batches.append(("labelled", rows(self.train, idx), self._inputs(idx, True)))
        if self.n_labelled < len(self.train):
            idx = (
                torch.arange(min(2, len(self.train))) if self._labelled is None else (~self._labelled).nonzero()[:2, 0]
            )
            kind = "unlabelled" if self.labels is not None else ""
            batches.append((kind, rows(self.train, idx), self._inputs(idx, False)))
        if self.test_labels is not None and not self.n_labelled:
            batches.append(("labelled test", self.test[:2], rows_of(self.test_inputs(), slice(0, 2))))
        return batches

    def batches(self) -> list[tuple[torch.Tensor, bool]]:
        """This epoch's batches: ``(row indices, labelled?)``."""
        t = self.settings
        return epoch_batches(len(self.train), t.batch_size, t.seed, self.epoch, self._labelled, self.train.device)

    def run_epoch(self) -> dict:
        """Finish the current epoch (from ``batch_index`` on, after a resume) and return its row."""
        t, n = self.settings, len(self.train)
        start = time.perf_counter()
        batches = self.batches()
        with pyro.validation_enabled(t.pyro_validation):
            self._steps(batches)
        test_elbo = elbo_per_datapoint(self.program, self.test, nesting=self.nesting, **self.test_inputs())
        row = {
            "epoch": self.epoch + 1,
            "train_objective": -self.cluster.sum(self.epoch_loss) / n,
            "test_elbo": test_elbo.mean().item(),
            "beta": self.beta(self.epoch + 1),
            "seconds": time.perf_counter() - start,
        }
        if self.val is not None:
            val_inputs = {} if self.labels is None else {"y": None}  # the validation rows have no labels
            row["val_elbo"] = (
                elbo_per_datapoint(self.program, self.val, nesting=self.nesting, **val_inputs).mean().item()
            )
        self.epoch, self.batch_index, self.epoch_loss = self.epoch + 1, 0, 0.0
        return row

    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the highest validation ELBO so far; None without a validation split."""
        if self.val is None or not self.history:
            return None
        scores = [row.get("val_elbo", -math.inf) for row in self.history]
        return max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1  # the first of equal scores

    def stopped_early(self) -> bool:
        """Whether ``patience`` epochs after the warm-up have passed without a better validation ELBO.

        Never before ``min_epochs``: the VampPrior paper's protocol lets a model that peaked early
        during the warm-up go on for the epochs after it."""
        t, best = self.settings, self.best_epoch()
        if not t.patience or best is None or self.epoch < t.min_epochs:
            return False
        warm_up = t.anneal_epochs if t.anneal != "none" else 0
        return self.epoch - max(best, warm_up) >= t.patience

    def _steps(self, batches) -> None:
        t, n, world = self.settings, len(self.train), self.cluster.world
        bar = tqdm(
            total=len(batches),
            initial=self.batch_index,
            desc=f"epoch {self.epoch + 1}/{t.epochs}",
            leave=False,
            disable=not self.progress,
        )
        # (M / M_kind)·N_kind: the kind's part of the data, over the share of the epoch's batches it takes
        kinds = [labelled for _, labelled in batches]
        sizes = {True: self.n_labelled, False: n - self.n_labelled}
        part = {kind: len(kinds) / kinds.count(kind) * sizes[kind] for kind in set(kinds)}
        with bar:  # closed however the epoch ends: divergence and interruption included
            for i in range(self.batch_index, len(batches)):
                idx, labelled = batches[i]
                rows = self.cluster.shard(idx)
                x = self.train[rows]
                if self.binarize:
                    x = binarize(x)
                # N·W/B without labels; across W ranks DDP's average restores the union batch's gradient
                scale = part[labelled] * world / len(idx)
                progress = self.epoch + i / len(batches)  # in epochs
                value = self._loss_and_grads(x, scale, self.beta(progress), self._inputs(rows, labelled))
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"the loss became {value} at epoch {self.epoch + 1}, step {i + 1}",
                        "training stopped, the last good checkpoint is kept",
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
                    self._end_grace()  # the step finished: the checkpoint below is written whatever it takes
                    if self.on_interrupt is not None:
                        self.on_interrupt(self)
                    raise Interrupted(self._signal)

    def _loss_and_grads(self, x: torch.Tensor, scale: float, beta: float, inputs: dict | None = None) -> float:
        """The objective's value on ``x`` (and its ``inputs``), with its gradient left in the parameters' ``.grad``."""
        if self.compiled is not None:
            loss = self.compiled(x, scale, beta, **(inputs or {}))
            if loss is not None:
                return loss.item()
            # it could not record this batch's shape, or disagreed with the program on it: it said so, eager now
            self.compiled, self.step_kind, self.step_reason = None, "eager", self.compiled.reason
        loss = self.loss(x, scale, beta, **(inputs or {}))
        value = loss.item()
        if math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        return value

    def fit(self) -> list[dict]:
        """Train until ``settings.epochs`` (the program was checked when the trainer was made)."""
        t = self.settings
        previous = (
            {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        )
        try:
            with (
                warnings.catch_warnings(),
                # leave=None: kept on its own, cleared where it is nested in a study's bar over variants
                tqdm(total=t.epochs, initial=self.epoch, desc="training", leave=None, disable=not self.progress) as bar,
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
                    if not self.progress:  # a plain line where no bar is drawn; shown at the CLI's INFO level
                        log.info("epoch %s", _epoch_line(row, t.epochs))
                    for callback in self.callbacks:
                        callback(self.epoch, dict(row))
        finally:
            self._end_grace()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.history

    def _on_signal(self, signum, frame):
        """A first signal asks for a checkpoint at the next step boundary; a second one, or a step that has not
        ended :data:`GRACE_SECONDS` later, stops training at once (the last whole checkpoint stays)."""
        if self._signal is None:
            self._signal = signum
            self._overdue = False
            self._grace = threading.Timer(GRACE_SECONDS, self._step_overdue, (signum,))
            self._grace.daemon = True
            self._grace.start()
            return
        late = getattr(self, "_overdue", False)
        self._end_grace()
        raise Interrupted(signum, forced=f"the step did not end within {GRACE_SECONDS:g}s" if late else "twice")

    def _step_overdue(self, signum: int) -> None:
        self._overdue = True
        os.kill(os.getpid(), signum)  # handled in the main thread, as a second signal

    def _end_grace(self) -> None:
        grace, self._grace = getattr(self, "_grace", None), None
        if grace is not None:
            grace.cancel()


def _epoch_line(row: dict, epochs: int) -> str:
    """``3/100: objective -95.2, test ELBO -98.1, validation ELBO -97.9, β 1.00 (2.1 s)``."""
    val = f", validation ELBO {row['val_elbo']:.2f}" if "val_elbo" in row else ""
    return (
        f"{row['epoch']}/{epochs}: objective {row['train_objective']:.2f}, test ELBO {row['test_elbo']:.2f}{val}, "
        f"β {row['beta']:.2f} ({row['seconds']:.1f} s)"
    )


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
