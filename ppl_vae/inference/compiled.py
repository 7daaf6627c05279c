r"""The compiled SVI step (``--compile``): one step recorded as a graph of tensor operations, compiled, replayed.

A VAE's programs do the same thing at every step: the guide draws
:math:`z = \mu(x) + \sigma(x)\,\varepsilon`, the model is replayed against it and the
log-densities are summed; only the data and the noise :math:`\varepsilon` change. So the
tensor operations of one whole step — guide and model under their effect handlers, the
ELBO, and its gradient with respect to every parameter — are recorded once per batch shape
with :func:`torch.fx.experimental.proxy_tensor.make_fx`, and later steps run the recording.
Random draws stay random (they are operations in the graph); what is paid once instead of
at every step is the Python of Pyro's messengers and traces and autograd's graph building.
The recording is then compiled by TorchInductor (``torch.compile``), which fuses its
elementwise operations into a few kernels; its random operations are left to the eager
generator (``fallback_random``), so a compiled step draws exactly the noise an eager step
would draw, and a resumed run stays exact.

The recorded loss is the same estimator as the eager objective, written without reading
values back to Python (Pyro's ``Trace_ELBO`` calls ``.item()``, which cannot be recorded):

.. math::

    -\mathcal L = -\frac1K \sum_k \Big[\sum_{\text{model sites}} \log p
                  - \sum_{\text{guide sites}} \log q\Big]

with the same ``poutine.scale`` (N/B) and β handlers, or the IWAE bound on the shared
log-weights. When a shape is first recorded, the recording is run against the eager
objective on the same batch and the same noise, and must agree.

The recording is faithful only where:

- every latent site of the guide is reparameterized (score-function terms are not recorded);
- every ``pyro.param`` is a parameter of the program's modules (registered with ``pyro.module`` or
  a ``PyroModule``; any other would be recorded as a constant);
- the programs do not branch on tensor values (recording refuses ``if tensor:`` and ``.item()``);
- one process trains (DDP hooks gradients as autograd produces them).

:class:`CompiledStep` checks these and raises :class:`~ppl_vae.errors.UserError` otherwise.

The same recording, replayed without compiling, is the *replayed* step; :func:`record` and
:func:`fuse_graph` also record and compile the importance sampler's chunks
(:mod:`ppl_vae.diagnostics.estimators`). Which step a run takes by default, and whether an
evaluation compiles its sampler, are functions of the run alone — its number of steps or chunks
and whether its program can be recorded (:func:`default_step`, :func:`compiles_sampler`) — never
of a measured time, so the same command takes the same path on a busy machine and a quiet one.
"""

from __future__ import annotations

import logging
import os
import traceback
import warnings

import pyro
import torch
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from ..errors import UserError
from .distributed import ProgramLoss
from .importance import global_latent_sites, latent_sites, replayed_traces, rng_untouched, sample_sites, trace_pair
from .objectives import Objective, with_handlers
from .params import ModuleParams, foreign_params
from .steps import COMPILE_STEPS, REPLAY_STEPS, SAMPLER_CHUNKS

__all__ = [
    "CompiledStep",
    "recordable_elbo",
    "choose_step",
    "default_step",
    "compiles_sampler",
    "as_step_kind",
    "record",
    "fuse_graph",
    "close",
    "STEP_KINDS",
    "REPLAY_STEPS",
    "COMPILE_STEPS",
    "SAMPLER_CHUNKS",
]

RECORDABLE = ("trace", "iwae")


def recordable_elbo(objective: Objective):
    """``loss(model, guide, x, scale, beta)``: ``objective``'s estimator without reads back to Python."""
    if objective.name == "iwae":
        return objective  # already computed from tensors alone

    def trace_elbo(model, guide, x, scale, beta):
        K = objective.particles
        guide_trace, model_trace = replayed_traces(
            with_handlers(model, scale, beta),
            with_handlers(guide, scale, beta),
            x,
            K,
            objective.nesting(model, guide, x),
        )
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        log_p = sum(site["log_prob_sum"] for site in sample_sites(model_trace))
        log_q = sum(site["log_prob_sum"] for site in sample_sites(guide_trace))
        return -(log_p - log_q) / K

    return trace_elbo


class CompiledStep:
    """``step(x, scale, beta) -> loss``, which also sets ``.grad`` of every parameter of ``program``.

    One recording per (batch shape, dtype, device, scale); β is an input of the recording,
    so annealing does not record again. ``fuse=False`` replays the recorded operations one
    by one instead of compiling them (no compiler needed, no compile time).
    """

    def __init__(self, program: nn.Module, objective: Objective, fuse: bool = True):
        if objective.name not in RECORDABLE:
            raise UserError(
                f"--compile records the {' and '.join(RECORDABLE)} ELBOs, not {objective.name!r}; "
                "train without --compile"
            )
        self.program, self.objective, self.fuse = program, objective, fuse
        self.loss = ProgramLoss(program, recordable_elbo(objective))
        self._graphs: dict[tuple, nn.Module] = {}
        self._verified: set[tuple] = set()  # shapes whose recording agreed on a second batch
        # the recording's inputs: each distinct parameter (they get gradients), then each buffer
        self._params = list(self.loss.parameters())
        self._inputs = self._params + list(self.loss.buffers())
        index = {id(t): i for i, t in enumerate(self._inputs)}
        self._holders = [(name, index[id(t)]) for name, t in _holders(self.loss)]

    def _tensors(self) -> list[torch.Tensor]:
        return [t.detach() for t in self._inputs]

    def __call__(self, x: torch.Tensor, scale: float, beta: float) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, float(scale))
        if key not in self._graphs:
            self._graphs[key] = self._record(x, float(scale))
        elif key not in self._verified:
            # once more on a batch it was not recorded on: a value read back as a number (.tolist(),
            # .numpy()) is a constant in the recording, which its own batch cannot show
            self._verified.add(key)
            self._check_agrees(self._graphs[key], x, float(scale), self._tensors())
        with torch.no_grad():
            loss, grads = self._graphs[key](
                self._tensors(), x, torch.tensor(float(beta), dtype=x.dtype, device=x.device)
            )
        for p, g in zip(self._params, grads):
            p.grad = g
        return loss

    def _step_fn(self, scale: float):
        n_params = len(self._params)

        def step(tensors, x, beta):
            leaves = [t.detach().requires_grad_(i < n_params) for i, t in enumerate(tensors)]
            # every holder swapped once and restored once: a module shared by two programs (the
            # VampPrior's encoder) must get its own Parameter objects back, the optimizer's
            swap = {name: leaves[i] for name, i in self._holders}
            # the stand-ins are what pyro.module finds in the modules now: answer it with them
            with torch.enable_grad(), ModuleParams(leaves[:n_params]):
                loss = functional_call(self.loss, swap, (x, scale, beta), tie_weights=False)
                grads = torch.autograd.grad(loss, leaves[:n_params], allow_unused=True)
            return loss.detach(), list(grads)

        return step

    def check(self, x: torch.Tensor) -> None:
        """Record (without compiling) a step on two rows of ``x``: refusals surface before training starts."""
        self._record(x[:2], 1.0, fuse=False)

    def _record(self, x: torch.Tensor, scale: float, fuse: bool | None = None) -> nn.Module:
        self._check_recordable(x)
        tensors = self._tensors()
        beta = torch.tensor(1.0, dtype=x.dtype, device=x.device)
        graph = record(
            self._step_fn(scale),
            (tensors, x, beta),
            "--compile cannot record this program: it branches on tensor values or reads them back "
            "(if tensor: / .item()); train without --compile",
        )
        if self.fuse if fuse is None else fuse:
            graph, problem = fuse_graph(graph, (tensors, x, beta))
            if problem is not None:
                warnings.warn(f"--compile: {problem}; replaying it uncompiled", RuntimeWarning, stacklevel=2)
        self._check_agrees(graph, x, scale, tensors)
        return graph

    def _check_recordable(self, x: torch.Tensor) -> None:
        model, guide = self.program.model, self.program.guide
        with rng_untouched(x):  # first: any other run would hand a foreign pyro.param to the global store
            foreign = foreign_params(model, guide, self.program, x[:2])
        if foreign:
            raise UserError(
                "--compile needs every parameter inside the program's modules; "
                f"pyro.param site(s) {', '.join(foreign)} are not parameters of the program's modules"
            )
        self.objective.nesting(model, guide, x[:2])  # before recording, so it is not recorded
        with rng_untouched(x):
            guide_trace, model_trace = trace_pair(model, guide, x[:2])
        held = [s["name"] for s in global_latent_sites(guide_trace)]
        if held:  # the eager step scales them apart (ScaleLocal); the recorder is not taught global sites
            raise UserError(
                f"--compile records programs whose every latent site is inside the data plate; global site(s) "
                f"{', '.join(map(repr, held))} are not; train without --compile"
            )
        score = [s["name"] for s in latent_sites(guide_trace) if not s["fn"].has_rsample]
        if score:
            raise UserError(
                "--compile records reparameterized guides only; "
                f"site(s) {', '.join(score)} need score-function gradients"
            )

    def _check_agrees(self, graph: nn.Module, x: torch.Tensor, scale: float, tensors: list[torch.Tensor]) -> None:
        """Run the recording and the eager objective on the same batch and noise; they must agree."""
        beta, seed = 0.5, 20240601
        with rng_untouched(x):
            torch.manual_seed(seed)
            with torch.enable_grad(), pyro.validation_enabled(False):
                eager = self.objective(self.program.model, self.program.guide, x, scale=scale, beta=beta)
                eager_grads = torch.autograd.grad(eager, self._params, allow_unused=True)
            torch.manual_seed(seed)
            loss, grads = graph(tensors, x, torch.tensor(beta, dtype=x.dtype, device=x.device))
        agree = close(loss, eager.detach()) and all(
            (a is None and b is None) or (a is not None and b is not None and close(a, b, 1e-3))
            for a, b in zip(grads, eager_grads)
        )
        if not agree:
            raise UserError(
                f"--compile: the recorded step gives loss {loss.item():.6g} "
                f"where the program gives {eager.item():.6g} (does it read tensor values back as numbers: "
                ".tolist(), .numpy(), float(tensor)?); train without --compile"
            )


def _holders(module: nn.Module):
    """``(name, tensor)`` for every module attribute holding a parameter or buffer, each module once."""
    for prefix, child in module.named_modules():
        for attr, tensor in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
            yield (f"{prefix}.{attr}" if prefix else attr), tensor


def _without_dead_code(graph: nn.Module) -> nn.Module:
    """Drop aliases and operations whose results nothing uses (random draws stay: they are impure)."""
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def kept_cache() -> str | None:
    """Point TorchInductor's on-disk cache at the user's cache folder, so a later run reuses its kernels.

    Its default lies in the system's temporary folder, which a reboot or a cleaner empties.
    ``$TORCHINDUCTOR_CACHE_DIR``, when set, is kept — and must be a folder that can be made: torch
    makes it when its compiler is first imported (by the optimizer, too), so one that cannot be
    is refused here in one line. The default is kept where the user's folder cannot be made.
    Returns the folder in use (``None``: TorchInductor's default).
    """
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given:
        try:
            os.makedirs(given, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"TORCHINDUCTOR_CACHE_DIR={given} cannot be made a folder ({err.strerror or type(err).__name__}); "
                "torch needs it: point it at a writable folder or unset it"
            ) from None
        return given
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "ppl_vae", "inductor")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return None
        if not os.access(folder, os.W_OK):
            return None
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def record(fn, args: tuple, refusal: str) -> nn.Module:
    """``fn(*args)``'s tensor operations as an FX graph (aliases and unused results dropped).

    Draws nothing from the RNG and checks nothing; a function that branches on tensor values
    or reads them back cannot be recorded: :class:`UserError` with ``refusal`` (whose first word
    is the flag that asked for it). So does a TorchInductor cache folder that cannot be made,
    which the recorder's imports need.
    """
    like = next(t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor))
    with torch.inference_mode(False), rng_untouched(like), pyro.validation_enabled(False):
        try:
            graph = make_fx(fn)(*args)
        except OSError as err:  # torch._dynamo makes TorchInductor's cache folder when it is first imported
            folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "TorchInductor's default")
            raise UserError(
                f"{refusal.split()[0]} cannot record: TorchInductor's cache folder {folder} cannot be used "
                f"({err.strerror or type(err).__name__}); set TORCHINDUCTOR_CACHE_DIR to a writable folder"
            ) from None
        except RuntimeError as err:
            if "tracing tensor" not in str(err) and "data-dependent" not in str(err):
                raise
            where = _program_line(err)
            raise UserError(refusal.replace("; ", f", at {where}; ", 1) if where else refusal) from None
    return _without_dead_code(graph)


def _program_line(err: BaseException) -> str:
    """``file.py:line, in function`` of the innermost frame outside torch, Pyro, ppl_vae and the standard library.

    Pyro re-raises a program's error with its trace attached, so the innermost cause is read.
    """
    while err.__cause__ is not None:
        err = err.__cause__
    libraries = [os.path.dirname(m.__file__) + os.sep for m in (torch, pyro, os)]
    libraries.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)  # ppl_vae itself
    where = ""
    for frame, line in traceback.walk_tb(err.__traceback__):
        name = frame.f_code.co_filename
        if not name.startswith("<") and not any(name.startswith(lib) for lib in libraries):
            where = f"{os.path.basename(name)}:{line}, in {frame.f_code.co_name}"
    return where


def fuse_graph(graph: nn.Module, args: tuple) -> tuple[nn.Module, str | None]:
    """``graph`` compiled by TorchInductor, random draws from the eager generator, and ``None``; or, where
    TorchInductor cannot compile it (no compiler, an unwritable cache folder), ``graph`` itself and why.

    Compiles now (on ``args``, RNG untouched), not inside the first call that uses it.
    """
    quiet = logging.getLogger("torch.utils.cpp_extension")  # it warns about CUDA_HOME on CPU-only machines
    level = quiet.level
    like = next(t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor))
    try:
        quiet.setLevel(logging.ERROR)
        kept_cache()
        with torch.inference_mode(False), rng_untouched(like), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the compiler's own deprecation notices are not the user's business
            compiled = torch.compile(graph, fullgraph=True, dynamic=False, options={"fallback_random": True})
            compiled(*args)
    except Exception as err:  # noqa: BLE001 - the plain replay still works
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return graph, f"TorchInductor could not compile the recording ({type(err).__name__}: {first})"
    finally:
        quiet.setLevel(level)
    return compiled, None


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether a recording's result ``a`` agrees with the eager ``b``, relative to ``b``'s largest magnitude."""
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)


# --- choosing: a function of the run alone, never of a measured time ------------------------------

STEP_KINDS = ("eager", "replayed", "compiled")
# the names checkpoints stored before the kinds had one vocabulary; "on" and "off" are also what the
# --compile switch says for the compiled and the eager step
_OLD_NAMES = {"off": "eager", "replay": "replayed", "on": "compiled"}

# the step counts that choose a kind: see ppl_vae.inference.steps


def as_step_kind(name: str) -> str:
    """``name`` in the one vocabulary of step kinds (:data:`STEP_KINDS`): ``eager``, ``replayed``, ``compiled``.

    Checkpoints written before stored ``off``, ``replay`` and ``on``, which are also the ``--compile``
    switch's words for the eager and the compiled step; they are mapped here, once.

    Example:
        >>> as_step_kind("replay"), as_step_kind("compiled")
        ('replayed', 'compiled')
    """
    kind = _OLD_NAMES.get(name, name)
    if kind not in STEP_KINDS:
        raise ValueError(f"a step kind is one of {', '.join(STEP_KINDS)}, not {name!r}")
    return kind


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


def choose_step(
    program: nn.Module, objective: Objective, x: torch.Tensor, steps: int, mode: str
) -> tuple[CompiledStep | None, str, str]:
    """The step to train with, its kind and one line saying why, under ``mode``: ``auto`` or a step kind.

    A kind is taken as asked (``compiled`` and ``replayed`` record, or refuse a program as
    :class:`CompiledStep` does); ``auto`` takes :func:`default_step` of the run's ``steps``, and the
    eager step where the program cannot be recorded (its refusal is the reason given).
    """
    if mode != "auto":
        kind = as_step_kind(mode)
        if kind == "eager":
            return None, kind, "eager step (--no-compile)"
        step = CompiledStep(program, objective, fuse=kind == "compiled")
        step.check(x)
        return step, kind, "compiled step (--compile)" if kind == "compiled" else "replayed step"
    rule = f"--compile auto: replayed from {REPLAY_STEPS} steps, compiled from {COMPILE_STEPS}"
    kind = default_step(steps, recordable=True)
    if kind == "eager":
        return None, kind, f"eager step: {steps} steps ({rule})"
    try:
        step = CompiledStep(program, objective, fuse=kind == "compiled")
        step.check(x)
    except UserError as err:
        return None, "eager", f"eager step: {err}".replace(" train without --compile", " (fallback)")
    return step, kind, f"{kind} step: {steps} steps ({rule})"
