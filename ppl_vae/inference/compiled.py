r"""The recorded SVI step (``--compile``): one step recorded as a graph of tensor operations, replayed or compiled.

A VAE's programs do the same thing at every step: the guide draws
:math:`z = \mu(x) + \sigma(x)\,\varepsilon`, the model is replayed against it and the
log-densities are summed; only the data and the noise :math:`\varepsilon` change. So the
tensor operations of one whole step — guide and model under their effect handlers, the
ELBO, and its gradient with respect to every parameter — are recorded once per batch shape
and later steps run the recording, replayed or compiled by TorchInductor, through the one
recording lifecycle of :mod:`ppl_vae.inference.recording` (record, verify against the eager
objective on the same noise, verify again on the next batch of the shape, then run; or fall
back to the eager step, or refuse where ``--compile`` forced it). A run compiles one shape, its
batch size: an epoch's ragged last batch is met once an epoch and would not repay a compilation of
its own, so its recording is replayed. A compiled step draws exactly the noise an eager step
would draw, and a resumed run stays exact.

The recorded loss is the same estimator as the eager objective, written without reading
values back to Python (Pyro's ``Trace_ELBO`` calls ``.item()``, which cannot be recorded):

.. math::

    -\mathcal L = -\frac1K \sum_k \Big[\sum_{\text{model sites}} \log p
                  - \sum_{\text{guide sites}} \log q\Big]

with the same ``poutine.scale`` (N/B) and β handlers, or the IWAE bound on the shared
log-weights. Pyro's ``TraceEnum_ELBO`` cannot be recorded either: its expectation drops the
enumerated values of probability zero with ``mask.all()`` and ``masked_select``, whose
shapes depend on the values. Its recorded form is the dense sum over the enumerated values
that the importance sampler already computes (:func:`~ppl_vae.inference.importance.log_weights`,
zero-probability values zeroed with ``torch.where``),

.. math::

    -\mathcal L = -\frac NB \frac1K \sum_{k,i} \sum_y q(y \mid x_i)\Big[\log p(x_i \mid y, z_{k,y})
                  + \beta\big(\log p(y, z_{k,y}) - \log q(y \mid x_i) - \log q(z_{k,y} \mid x_i, y)\big)\Big]

(Kingma et al. 2014, arXiv:1406.5298, eq. 7; an observed y, a labelled batch, is no sum),
the minibatch scale and β applied outside the sum, where ``TraceEnum_ELBO`` scales the costs
and leaves the probabilities q(y|x) unscaled. A program's inputs (labels ``y``) are inputs of
the recording; ``y=None`` (an unlabelled batch) has a recording of its own.

The recording is faithful only where:

- every latent site of the guide is reparameterized (score-function terms are not recorded),
  or, for ``traceenum``, enumerated in parallel;
- every ``pyro.param`` is a parameter of the program's modules (registered with ``pyro.module`` or
  a ``PyroModule``; any other would be recorded as a constant);
- the programs do not branch on tensor values (recording refuses ``if tensor:`` and ``.item()``);
- one process trains (DDP hooks gradients as autograd produces them).

:class:`RecordedStep` checks these and refuses a program otherwise
(:class:`~ppl_vae.inference.recording.Unrecordable`).

Which step a run takes by default, and whether an evaluation compiles its sampler, are functions
of the run alone — its number of steps or chunks and whether its program can be recorded
(:func:`default_step`, :func:`compiles_sampler`) — never of a measured time, so the same command
takes the same path on a busy machine and a quiet one.
"""

from __future__ import annotations

import logging

import pyro
import torch
from torch import nn
from torch.func import functional_call

from ..contracts import rows_of
from ..errors import UserError
from .distributed import ProgramLoss
from .importance import (
    global_latent_sites,
    latent_sites,
    log_weights,
    replayed_traces,
    rng_untouched,
    sample_sites,
    trace_pair,
)
from .objectives import Objective, with_handlers
from .params import ModuleParams
from .recording import Recorder, Unrecordable, joined_inputs, split_inputs
from .steps import COMPILE_STEPS, REPLAY_STEPS, SAMPLER_CHUNKS, STEP_KINDS, as_step_kind
from .trial import check_params

log = logging.getLogger(__name__)

__all__ = [
    "RecordedStep",
    "recordable_elbo",
    "choose_step",
    "default_step",
    "compiles_sampler",
    "sampler_kind",
    "as_step_kind",
    "STEP_KINDS",
    "REPLAY_STEPS",
    "COMPILE_STEPS",
    "SAMPLER_CHUNKS",
]

RECORDABLE = ("trace", "traceenum", "iwae")
FLAG, HINT = "--compile", "train without --compile"


def recordable_elbo(objective: Objective):
    """``loss(model, guide, x, scale, beta, **inputs)``: ``objective``'s estimator without reads back to Python."""
    if objective.name == "iwae":
        return objective  # already computed from tensors alone

    def traceenum_elbo(model, guide, x, scale, beta, **inputs):
        # the per-datapoint terms of the log-weights, enumerated values summed densely (module docstring);
        # N/B and β multiply outside, so the probabilities q(y|x) of the sum stay unscaled, as in TraceEnum_ELBO
        K = objective.particles
        lw = log_weights(model, guide, x, K, objective.nesting(model, guide, x, **inputs), **inputs)
        return -scale * (lw.log_lik + beta * lw.log_ratio).sum() / K  # lw terms: (K, B)

    if objective.name == "traceenum":
        return traceenum_elbo

    def trace_elbo(model, guide, x, scale, beta, **inputs):
        K = objective.particles
        guide_trace, model_trace = replayed_traces(
            with_handlers(model, scale, beta),
            with_handlers(guide, scale, beta),
            x,
            K,
            objective.nesting(model, guide, x, **inputs),
            **inputs,
        )
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        log_p = sum(site["log_prob_sum"] for site in sample_sites(model_trace))
        log_q = sum(site["log_prob_sum"] for site in sample_sites(guide_trace))
        return -(log_p - log_q) / K

    return trace_elbo


class RecordedStep:
    """``step(x, scale, beta, **inputs) -> loss``, which also sets ``.grad`` of every parameter of ``program``; ``None``
    where the step fell back to eager (the caller then takes the eager step; ``reason`` says why).

    One recording per (batch shape, dtype, device, scale, inputs given as ``None``); β and the
    inputs' tensors (labels ``y``) are inputs of the recording, so annealing and each batch's
    labels do not record again. ``kind`` is ``compiled`` (TorchInductor fuses the recorded
    operations) or ``replayed`` (they run one by one: no compiler needed, no compile time).
    ``forced``: a program the recording cannot reproduce is refused rather than trained eagerly.
    ``rows``: the batch size; a batch of another size (an epoch's ragged last batch) is replayed, not
    compiled, so a run compiles one shape (each kind of batch: labelled, unlabelled) where it can.
    """

    def __init__(
        self,
        program: nn.Module,
        objective: Objective,
        kind: str = "compiled",
        forced: bool = True,
        rows: int | None = None,
    ):
        if objective.name not in RECORDABLE:
            names = f"{', '.join(RECORDABLE[:-1])} and {RECORDABLE[-1]}"
            raise Unrecordable(f"{FLAG} records the {names} ELBOs, not {objective.name!r}", HINT)
        self.program, self.objective, self.rows = program, objective, rows
        self.loss = ProgramLoss(program, recordable_elbo(objective))
        # the recording's inputs: each distinct parameter (they get gradients), then each buffer
        self._params = list(self.loss.parameters())
        self._inputs = self._params + list(self.loss.buffers())
        index = {id(t): i for i, t in enumerate(self._inputs)}
        self._holders = [(name, index[id(t)]) for name, t in _holders(self.loss)]
        self.recorder = Recorder(
            self._step_fn,
            self._eager_fn,
            as_step_kind(kind),
            forced=forced,
            flag=FLAG,
            hint=HINT,
            what="step",
            prepare=self._check_recordable,
            say=log.warning,
        )

    @property
    def kind(self) -> str:
        """What the step does now: ``compiled``, ``replayed``, or ``eager`` once it fell back."""
        return self.recorder.kind

    @property
    def reason(self) -> str:
        return self.recorder.reason

    def _args(self, x: torch.Tensor, beta: float, inputs: dict) -> tuple:
        """``(static, args)`` of a recorder call: the scale and which inputs are ``None`` are static."""
        tensors = [t.detach() for t in self._inputs]
        key, values = split_inputs(inputs)
        return key, (tensors, x, torch.tensor(float(beta), dtype=x.dtype, device=x.device), *values)

    def __call__(self, x: torch.Tensor, scale: float, beta: float, **inputs) -> torch.Tensor | None:
        key, args = self._args(x, beta, inputs)
        out = self.recorder((float(scale), key), *args, fuse=self.rows in (None, len(x)))
        if out is None:
            return None
        loss, grads = out
        for p, g in zip(self._params, grads):
            p.grad = g
        return loss

    def check(self, x: torch.Tensor, **inputs) -> None:
        """Record (without compiling) a step on two rows of ``x`` (and their ``inputs``): refusals surface before
        training starts."""
        key, args = self._args(x[:2], 0.5, rows_of(inputs, slice(0, 2)))  # β other than 1: its handler is exercised
        self.recorder.check((1.0, key), *args)

    def _step_fn(self, static: tuple):
        n_params = len(self._params)
        scale, key = static

        def step(tensors, x, beta, *values):
            leaves = [t.detach().requires_grad_(i < n_params) for i, t in enumerate(tensors)]
            # every holder swapped once and restored once: a module shared by two programs (the
            # VampPrior's encoder) must get its own Parameter objects back, the optimizer's
            swap = {name: leaves[i] for name, i in self._holders}
            # the stand-ins are what pyro.module finds in the modules now: answer it with them
            with torch.enable_grad(), ModuleParams(leaves[:n_params]):
                args, inputs = (x, scale, beta), joined_inputs(key, values)
                loss = functional_call(self.loss, swap, args, inputs, tie_weights=False)
                grads = torch.autograd.grad(loss, leaves[:n_params], allow_unused=True)
            return loss.detach(), list(grads)

        return step

    def _eager_fn(self, static: tuple):
        """The eager objective and its gradients: what a recording of :meth:`_step_fn` must give."""
        scale, key = static

        def step(tensors, x, beta, *values):
            model, guide, inputs = self.program.model, self.program.guide, joined_inputs(key, values)
            with torch.enable_grad(), pyro.validation_enabled(False):
                loss = self.objective(model, guide, x, scale=scale, beta=beta.item(), **inputs)
                grads = torch.autograd.grad(loss, self._params, allow_unused=True)
            return loss.detach(), list(grads)

        return step

    def _check_recordable(self, static: tuple, tensors, x: torch.Tensor, beta, *values) -> None:
        model, guide = self.program.model, self.program.guide
        x, inputs = x[:2], rows_of(joined_inputs(static[1], values), slice(0, 2))
        try:  # first: any other run would hand a foreign pyro.param to the global store
            check_params(self.program, x, **inputs)
        except UserError as err:
            raise Unrecordable(f"{FLAG} needs every parameter inside the program's modules", str(err)) from None
        self.objective.nesting(model, guide, x, **inputs)  # before recording, so it is not recorded
        with rng_untouched(x):
            guide_trace, model_trace = trace_pair(model, guide, x, **inputs)
        held = [s["name"] for s in global_latent_sites(guide_trace)]
        if held:  # the eager step scales them apart (ScaleLocal); the recorder is not taught global sites
            raise Unrecordable(
                f"{FLAG} records programs whose every latent site is inside the data plate; global site(s) "
                f"{', '.join(map(repr, held))} are not"
            )
        summed = self.objective.name == "traceenum"  # its enumerated sites are summed, not sampled
        score = [
            s["name"]
            for s in latent_sites(guide_trace)
            if not s["fn"].has_rsample and not (summed and s["infer"].get("enumerate") == "parallel")
        ]
        if score:
            raise Unrecordable(
                f"{FLAG} records reparameterized guides only; site(s) {', '.join(score)} need score-function gradients"
            )


def _holders(module: nn.Module):
    """``(name, tensor)`` for every module attribute holding a parameter or buffer, each module once."""
    for prefix, child in module.named_modules():
        for attr, tensor in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
            yield (f"{prefix}.{attr}" if prefix else attr), tensor


# --- choosing: a function of the run alone, never of a measured time ------------------------------


def default_step(steps: int, recordable: bool) -> str:
    """The step ``--compile auto`` takes over a run of ``steps`` steps: eager, replayed or compiled.

    Eager unless the program can be recorded and the run is long enough to repay it: replayed from
    :data:`REPLAY_STEPS` steps, compiled from :data:`COMPILE_STEPS`. A function of the run alone, so
    the same command takes the same step on a busy machine and a quiet one.
    """
    if not recordable or steps < REPLAY_STEPS:
        return "eager"
    return "compiled" if steps >= COMPILE_STEPS else "replayed"


def compiles_sampler(chunks: int) -> tuple[bool, str]:
    """Whether ``--compile-sampler auto`` compiles an evaluation of ``chunks`` full chunks, and one line saying so.

    It does from :data:`SAMPLER_CHUNKS` chunks: a count, so the same evaluation takes the same path
    on a busy machine and a quiet one.
    """
    compiles = chunks >= SAMPLER_CHUNKS
    kind = "compiled" if compiles else "eager"
    return (
        compiles,
        f"{kind} importance sampler: {chunks} chunks (--compile-sampler auto: compiled from {SAMPLER_CHUNKS})",
    )


def sampler_kind(mode: str, chunks: int) -> tuple[str, bool, str]:
    """The importance sampler's kind under ``--compile-sampler`` ``mode`` (``auto`` or a kind, ``on``/``off``
    included) for an evaluation of ``chunks`` full chunks: ``(kind, forced, one line saying so)``."""
    if mode == "auto":
        compiles, note = compiles_sampler(chunks)
        return ("compiled" if compiles else "eager"), False, note
    kind = as_step_kind(mode)
    flag = "--no-compile-sampler" if kind == "eager" else "--compile-sampler"
    return kind, True, f"{kind} importance sampler ({flag})"


def choose_step(
    program: nn.Module,
    objective: Objective,
    trials: list[tuple[torch.Tensor, dict]],
    steps: int,
    mode: str,
    forced: bool = True,
    rows: int | None = None,
) -> tuple[RecordedStep | None, str, str]:
    """The step to train with, its kind and one line saying why, under ``mode``: ``auto`` or a step kind.

    ``trials`` are a batch ``(x, inputs)`` of each kind the run feeds the program (a labelled one
    with ``y``, an unlabelled one with ``y=None``). A kind is taken as asked (``compiled`` and
    ``replayed`` record on each trial now, or refuse the
    program, :class:`~ppl_vae.inference.recording.Unrecordable`; ``forced=False`` lets the step
    fall back to eager if a later batch shows it cannot be recorded); ``auto`` takes
    :func:`default_step` of the run's ``steps``, and the eager step where the program cannot be
    recorded (its refusal is the reason given). ``rows`` is the batch size: the shape that is compiled.
    """
    if mode != "auto":
        kind = as_step_kind(mode)
        if kind == "eager":
            return None, kind, "eager step (--no-compile)"
        step = RecordedStep(program, objective, kind, forced, rows)
        for x, inputs in trials:
            step.check(x, **inputs)
        return step, kind, "compiled step (--compile)" if kind == "compiled" else "replayed step"
    rule = f"--compile auto: replayed from {REPLAY_STEPS} steps, compiled from {COMPILE_STEPS}"
    kind = default_step(steps, recordable=True)
    if kind == "eager":
        return None, kind, f"eager step: {steps} steps ({rule})"
    try:
        step = RecordedStep(program, objective, kind, forced=False, rows=rows)
        for x, inputs in trials:
            step.check(x, **inputs)
    except Unrecordable as err:
        return None, "eager", f"eager step: {err.reason} (fallback)"
    return step, kind, f"{kind} step: {steps} steps ({rule})"
