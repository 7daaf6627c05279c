"""A run in memory: a trained program with its configuration, its numbers and its data.

:class:`Run` is what :func:`~ppl_vae.runs.fit.fit` returns and :func:`~ppl_vae.runs.load.load`
reads back from a run directory. Where the other jobs of a run live:

- :mod:`ppl_vae.runs.fit` — a new run; :mod:`ppl_vae.runs.resume` — continuing one;
- :mod:`ppl_vae.runs.transaction` — training into a directory as one transaction (both use it);
- :mod:`ppl_vae.runs.preflight` — the checks made before anything is written;
- :mod:`ppl_vae.runs.schema` — what the files of a run directory hold, checked;
- :mod:`ppl_vae.runs.layout` — the directory's layout and which directories a run may take;
- :mod:`ppl_vae.runs.figures` — the pictures of a finished training;
- :mod:`ppl_vae.runs.load` — reading a run directory back.

Layer 3 — imports ``config``, ``data``, ``inference`` and the programs' wrapper (:mod:`.build`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.datasets import Dataset, load_data
from ..errors import UserError
from ..inference.importance import rng_untouched
from ..inference.predictive import data_columns, prior_decode, reconstruct, repeat_rows
from .build import ModelAndGuide
from .sources import SourceFile, user_code_errors

__all__ = ["Run", "resolve_device"]


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


@dataclass
class Run:
    """A trained program, its configuration and its numbers."""

    path: Path
    config: Config
    program: ModelAndGuide
    data_dim: int
    image_shape: tuple[int, ...]
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    data: Dataset | None = None
    checkpoint: dict = field(default_factory=dict)  # epoch and step of the weights held
    sources: dict[str, SourceFile] = field(default_factory=dict, repr=False)
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
        with user_code_errors(self.sources):
            return reconstruct(self.program.model, self.program.guide, x.to(self.device), num_particles, **inputs)

    def sample(self, n: int, like: torch.Tensor | None = None, **inputs) -> torch.Tensor | None:
        """Decodings of n draws z ~ p(z): ``(n, D)``, given ``inputs`` (``y`` ``(n,)``) and rows ``like`` (a given
        quadrant: what the model conditions on); ``None`` if no observed site holds x or a part of it. Global
        latents are one draw θ ~ q(θ).

        A program whose observed site holds only some of x's columns conditions on the others: without
        ``like`` it is given the test split's first rows (repeated to n)."""
        like = None if like is None else like.to(self.device)
        with user_code_errors(self.sources):
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
