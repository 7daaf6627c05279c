r"""What a program and its parts are: the contracts, written once as typed protocols.

A newcomer reads this file to learn what to implement; the bench checks programs against it
before any work (``ppl_vae.inference.trial.check_program``), so an error names the contract
that was not met. Every contract is one call that returns a distribution (or runs a Pyro
program), as zuko's ``LazyDistribution`` is: the parts are built by ``ppl_vae.models`` and
``ppl_vae.guides`` and combined by ``ppl_vae.runs.build``.

- :class:`Prior`: ``prior()`` returns :math:`p(z)` with event shape ``(L,)``.
- :class:`PosteriorHead`: ``head(h)`` returns :math:`q(z \mid x)` from an encoder's hidden state
  ``h``; ``head.base(h)`` returns a closed-form base of it (the posterior itself for Gaussian
  heads, :math:`q_0` for flows), which the VampPrior mixes.
- :class:`Likelihood`: ``likelihood(f)`` returns :math:`p(x \mid z)` with event shape ``(D,)`` from a
  decoder output ``f`` of ``D * params_per_pixel`` values; ``support`` is the data range it
  accepts.
- :class:`Model` / :class:`Guide`: a Pyro program ``model(x, **inputs)`` / ``guide(x, **inputs)``.
- :class:`Program`: a ``torch.nn.Module`` with both methods; :class:`ProgramFactory` builds one
  for a command-line ``--model file.py:factory``.

**Inputs.** ``x`` is a batch of rows ``(B, D)`` (reshape it inside the program if it is an
image). What the data set carries beside x reaches the programs as keyword arguments, if
their signature names them (:func:`accepted_inputs`): ``y``, class indices ``(B,)`` int64, for
a batch of labelled points, and ``y=None`` for an unlabelled batch (``--labels N``; a batch
is all-labelled or all-unlabelled). A program that does not name ``y`` never gets it.

**Rules** a pair of programs follows (checked on a trial batch of each kind before a run
directory exists, :func:`ppl_vae.inference.trial.check_program`; a broken rule is one line
naming the site and the reason, exit status 2):

- one ``pyro.plate("data", x.shape[0])`` over the batch; every per-point sample site inside it
  (other plates may nest inside it);
- latent sites outside it are global latents θ (a prior on decoder weights, a hyperprior), in
  model and guide alike: one value for the data set, whose shape does not follow the batch;
  they count once per data set, the local sites N/B times a minibatch, and held-out log p(x*)
  is the posterior predictive log E_q(θ)[p(x*|θ)]. Observed and enumerated sites stay inside;
- any number of latent sites, continuous or discrete, and any number and shape of observed
  sites (``obs=``); the guide samples every latent site of the model, under the same names;
- a discrete site marked ``infer={"enumerate": "parallel"}`` (in the guide; or in the model
  and absent from the guide) is summed out exactly by ``--elbo traceenum`` and by every
  estimator; it must sit in the data plate only (no nested plate); objectives without a sound
  gradient for a non-reparameterized site are refused (:func:`ppl_vae.inference.objectives.unsound_site`);
- ``pyro.deterministic`` records a value (not an observation); ``obs_mask`` (whose
  ``<name>_unobserved`` site the guide samples), ``poutine.mask`` and a distribution's
  ``.mask(m)`` leave elements out of the likelihood — decodings and predictive draws keep the
  observed value there (a conditional VAE observing part of an image);
- the observed site whose value is ``x`` itself is the *data site*: its mean is the decoding
  shown in pictures and compared in the MSE;
- parameters live in the program's modules (plain ``nn.Parameter``\ s, a ``PyroModule``'s, or a
  module registered with ``pyro.module``); the bench trains and saves exactly those, and
  refuses a ``pyro.param`` outside them;
- the programs broadcast over extra leading batch dimensions (a particle plate left of the
  data plate, and enumeration dims left of that), as Pyro's vectorized ELBOs require: take
  leading dims from the tensors (``z.shape[:-1]``), not from ``x.shape[0]``.

Layer 0 — may import: torch, pyro, the standard library.

Example:
    >>> import torch, pyro, pyro.distributions as dist
    >>> class Tiny(torch.nn.Module):
    ...     def model(self, x):
    ...         with pyro.plate("data", x.shape[0]):
    ...             z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...             pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    ...     def guide(self, x):
    ...         with pyro.plate("data", x.shape[0]):
    ...             pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> isinstance(Tiny(), Program)
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import pyro.distributions as dist
import torch

__all__ = [
    "Prior",
    "PosteriorHead",
    "Likelihood",
    "Model",
    "Guide",
    "Program",
    "ProgramFactory",
    "DATA_PLATE",
    "INPUTS",
    "accepted_inputs",
    "select_inputs",
    "rows_of",
]

DATA_PLATE = "data"
"""The name of the plate over the observations of a batch, shared by model and guide."""

INPUTS = ("y",)
"""The inputs a data set can carry beside x: ``y``, class labels (``None`` for an unlabelled batch)."""


def accepted_inputs(fn: Callable) -> frozenset[str] | None:
    """The keyword inputs ``fn(x, ...)`` names, or ``None`` if it takes any (``**kwargs``).

    Example:
        >>> sorted(accepted_inputs(lambda x, y=None: None))
        ['y']
        >>> accepted_inputs(lambda x, **inputs: None) is None
        True
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params[1:] if p.kind is not inspect.Parameter.VAR_POSITIONAL)


def select_inputs(accepted: frozenset[str] | None, inputs: dict) -> dict:
    """The part of ``inputs`` a program whose :func:`accepted_inputs` are ``accepted`` takes."""
    if accepted is None or not inputs:
        return inputs
    return {k: v for k, v in inputs.items() if k in accepted}


def rows_of(inputs: dict, rows) -> dict:
    """The inputs of the rows ``rows`` (a slice or an index) of x: each tensor with a batch dimension indexed,
    the rest (``y=None``, a 0-dim tensor) as it is.

    Example:
        >>> rows_of({"y": torch.tensor([3, 1, 4]), "c": None}, slice(1, None))
        {'y': tensor([1, 4]), 'c': None}
    """
    return {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in inputs.items()}


@runtime_checkable
class Prior(Protocol):
    """``prior()`` returns p(z), a distribution with event shape ``(L,)`` (batch shape ``()``)."""

    def __call__(self) -> dist.Distribution: ...


@runtime_checkable
class PosteriorHead(Protocol):
    """``head(h)`` returns q(z|x) with batch shape ``h.shape[:-1]`` and event shape ``(L,)``.

    ``base(h)`` returns a distribution of the same shapes whose density is available in closed
    form: the posterior itself for Gaussian heads, the base :math:`q_0` for flows.
    """

    def __call__(self, h: torch.Tensor) -> dist.Distribution: ...

    def base(self, h: torch.Tensor) -> dist.Distribution: ...


@runtime_checkable
class Likelihood(Protocol):
    """``likelihood(f)`` returns p(x|z), event shape ``(D,)``, from decoder outputs ``(..., D * params_per_pixel)``."""

    params_per_pixel: int
    support: tuple[float, float]

    def __call__(self, decoder_output: torch.Tensor) -> dist.Distribution: ...


@runtime_checkable
class Model(Protocol):
    """A generative Pyro program p(z) p(x|z) over a batch ``x`` and the data set's other inputs (labels ``y``…)."""

    def model(self, x: torch.Tensor, **inputs: torch.Tensor | None) -> object: ...


@runtime_checkable
class Guide(Protocol):
    """An inference Pyro program q(z|x) with the model's plate and latent site names."""

    def guide(self, x: torch.Tensor, **inputs: torch.Tensor | None) -> object: ...


@runtime_checkable
class Program(Model, Guide, Protocol):
    """A module with both programs: what the bench trains, saves, evaluates and compares."""


class ProgramFactory(Protocol):
    """``factory(data_dim, latent_dim)`` returns a :class:`Program` module; named by ``--model file.py:factory``.

    A factory that also names ``num_classes`` or ``image_shape`` gets them (C of a labelled
    data set, ``None`` without labels; the shape of one row as an image).
    """

    def __call__(self, data_dim: int, latent_dim: int) -> Program: ...
