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
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings

import pyro
import torch
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from ..errors import UserError
from .distributed import ProgramLoss
from .importance import latent_sites, replayed_traces, rng_untouched, sample_sites, trace_pair
from .objectives import Objective, with_handlers
from .params import ModuleParams, foreign_params

__all__ = ["CompiledStep", "recordable_elbo", "choose_step", "compile_pays"]

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
        step = self._step_fn(scale)
        with rng_untouched(x), pyro.validation_enabled(False):
            try:
                graph = make_fx(step)(tensors, x, beta)
            except RuntimeError as err:
                if "tracing tensor" not in str(err) and "data-dependent" not in str(err):
                    raise
                raise UserError(
                    "--compile cannot record this program: it branches on tensor values or reads them back "
                    "(if tensor: / .item()); train without --compile"
                ) from None
        graph = _without_dead_code(graph)
        if self.fuse if fuse is None else fuse:
            graph = _fused(graph, tensors, x, beta)
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
        tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, abs(eager.item()) / max(1, x.shape[0])))
        agree = torch.allclose(loss, eager.detach(), **tol) and all(
            (a is None and b is None)
            or (
                a is not None
                and b is not None
                and torch.allclose(a, b, rtol=1e-3, atol=1e-3 * max(1.0, b.abs().max().item()))
            )
            for a, b in zip(grads, eager_grads)
        )
        if not agree:
            raise UserError(
                f"--compile: the compiled step gives loss {loss.item():.6g} "
                f"where the program gives {eager.item():.6g}; "
                "train without --compile"
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
    ``$TORCHINDUCTOR_CACHE_DIR``, when set, is kept; so is the default where the folder cannot be
    made. Returns the folder in use (``None``: TorchInductor's default).
    """
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


def _fused(graph: nn.Module, tensors: list[torch.Tensor], x: torch.Tensor, beta: torch.Tensor) -> nn.Module:
    """``graph`` compiled by TorchInductor, random draws from the eager generator; ``graph`` itself if that fails."""
    kept_cache()
    compiled = torch.compile(graph, fullgraph=True, dynamic=False, options={"fallback_random": True})
    quiet = logging.getLogger("torch.utils.cpp_extension")  # it warns about CUDA_HOME on CPU-only machines
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with rng_untouched(x):
            compiled(tensors, x, beta)  # compiles now, not inside a training step
    except Exception as err:  # noqa: BLE001 - no compiler, unsupported device: the plain replay still works
        warnings.warn(
            f"--compile: TorchInductor could not compile the recorded step ({type(err).__name__}); "
            "replaying it uncompiled",
            RuntimeWarning,
            stacklevel=3,
        )
        return graph
    finally:
        quiet.setLevel(level)
    return compiled


# --- choosing the step: compiled when it pays ---------------------------------------------------

COMPILE_SECONDS = 8.0  # one-off cost of recording and compiling one batch shape on CPU (BENCHMARKS.md: 5–23 s)
FIXED_SAVING = 8e-4  # seconds a step: Pyro's messengers and autograd's graph building, paid once when compiled
SAVING_FRACTION = 0.13  # and the share of the remaining work that fusing elementwise kernels saves


def compile_pays(eager_step_seconds: float, steps: int, shapes: int) -> tuple[bool, str]:
    """Whether compiling the step pays over ``steps`` steps, from a measured eager step time.

    The estimate is saving ≈ ``FIXED_SAVING + SAVING_FRACTION · t_eager`` a step (fitted to the
    digits and MNIST rows of BENCHMARKS.md: 1.1 ms of 2 ms, 2.4 ms of 12 ms) against
    ``COMPILE_SECONDS`` a batch shape; it must pay twice over, since the estimate is rough.
    Returns the decision and the one line that says why.
    """
    saving = steps * (FIXED_SAVING + SAVING_FRACTION * eager_step_seconds)
    cost = shapes * COMPILE_SECONDS
    pays = saving > 2 * cost
    verdict = "compiled" if pays else "eager"
    return pays, (
        f"{verdict} step: {steps} steps × {1e3 * eager_step_seconds:.2f} ms eager would save about {saving:.0f} s "
        f"compiled, against about {cost:.0f} s to compile {shapes} batch shape(s)"
    )


def choose_step(
    program: nn.Module, objective: Objective, loss, x: torch.Tensor, steps: int, shapes: int, mode: str
) -> tuple[CompiledStep | None, str]:
    """The step to train with under ``mode`` (auto | on | off), and one line saying which and why.

    ``on`` records (or refuses, as :class:`CompiledStep` does) whatever the estimate; ``off`` is the
    eager step; ``auto`` times a few eager steps of ``loss(x, scale, beta)`` on ``x`` and compiles
    only when :func:`compile_pays`, falling back to the eager step when the program cannot be recorded.
    """
    if mode == "off":
        return None, "eager step (--no-compile)"
    if mode == "on":
        compiled = CompiledStep(program, objective)
        compiled.check(x)
        return compiled, "compiled step (--compile)"
    pays, why = compile_pays(_eager_step_seconds(loss, x), steps, shapes)
    if not pays:
        return None, why
    try:
        compiled = CompiledStep(program, objective)
        compiled.check(x)
    except UserError as err:
        return None, f"eager step: {err}".replace(" train without --compile", " (fallback)")
    return compiled, why


def _eager_step_seconds(loss, x: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of the eager loss and gradient on ``x`` (the RNG left as it was)."""
    times = []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for i in range(repeats + 1):
            start = time.perf_counter()
            value = loss(x, float(x.shape[0]), 1.0)
            value.backward()
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            if i:  # the first call pays one-off costs (plate nesting, allocations)
                times.append(time.perf_counter() - start)
    for p in loss.parameters():
        p.grad = None
    return statistics.median(times)
