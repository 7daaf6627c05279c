"""Checking a program against :mod:`ppl_vae.contracts` before any work is done.

:func:`check_program` runs the pair on one small trial batch of each kind training and
evaluation will feed it (labelled, unlabelled): the guide and the model replayed against it,
the structure the bench relies on (the data plate, matching latent site names, where
enumerated sites sit, where parameters live, global latents outside the plate whose shape does
not follow the batch), one evaluation step with K = 2 particles in one
vectorized pass (the per-datapoint log-weights every estimator uses), and the objective with
its soundness check. Every refusal is a :class:`~ppl_vae.errors.UserError` whose one line
names the program, the site and the reason, so a user sees it before a run directory exists
— never after training.

Programs that cannot broadcast over a leading particle dimension are refused here rather than
run particle by particle: the contract asks for it (as Pyro's vectorized ELBOs do), the fix is
local to the program (leading dims from ``z.shape[:-1]``, not ``x.shape[0]``), and a silent
particle-by-particle fallback would make every K = 1000 evaluation a thousand sequential passes.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Collection

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..contracts import DATA_PLATE, Guide, Model, rows_of
from ..errors import UserError
from .importance import (
    is_global,
    latent_sites,
    log_weights,
    max_plate_nesting,
    replayed_traces,
    rng_untouched,
    sample_sites,
)
from .params import foreign_params, local_params
from .plates import find_data_plate
from .predictive import default_dtype

__all__ = [
    "check_module",
    "check_program",
    "check_params",
    "check_latent_names",
    "LastSite",
    "user_line",
    "TRIAL_PARTICLES",
]

TRIAL_PARTICLES = 2  # K of the trial evaluation step: enough to expose a missing particle broadcast


def check_module(module: object, role: str, where: str) -> nn.Module:
    """Return ``module`` if it is a ``torch.nn.Module`` satisfying the contract of ``role`` ("model" or "guide")."""
    contract = {"model": Model, "guide": Guide}[role]
    if not isinstance(module, nn.Module):
        raise UserError(f"{where} returned {type(module).__name__}, not a torch.nn.Module (ppl_vae.contracts.Program)")
    if not isinstance(module, contract):
        raise UserError(
            f"{where} does not satisfy ppl_vae.contracts.{contract.__name__}: it has no method {role}(x, **inputs)"
        )
    return module


class LastSite(Messenger):
    """Remember the last site a program reached (and a sample site's shape), to say where it failed."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None
        self.shape: tuple[int, ...] | None = None  # the shape of the last sample site's value

    def _postprocess_message(self, msg):
        if msg["type"] in ("sample", "param") and not site_is_subsample(msg) and not str(msg["name"]).startswith("_"):
            self.name = msg["name"]
            value = msg["value"]
            self.shape = tuple(value.shape) if msg["type"] == "sample" and isinstance(value, torch.Tensor) else None


def user_line(err: BaseException, files: Collection[str] | None = None) -> tuple[str, int, str] | None:
    """``(file, line, function)`` of the innermost frame of the user's code where ``err`` was raised: in one of
    ``files`` where given, else outside torch, Pyro, ppl_vae and the standard library; ``None`` if none.

    Pyro re-raises a program's error with the original as its cause: the causes are read too, innermost last.
    """
    libraries = [os.path.dirname(m.__file__) + os.sep for m in (torch, pyro, os)]
    libraries.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)  # ppl_vae itself
    users = (lambda f: f in files) if files is not None else (lambda f: not any(f.startswith(x) for x in libraries))
    where, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame, line in traceback.walk_tb(err.__traceback__):
            name = frame.f_code.co_filename
            if not name.startswith("<") and users(name):
                where = (name, line, frame.f_code.co_name)
        err = err.__cause__
    return where


def _failure(where: str, what: str, last: LastSite, err: Exception, particles: int = 0) -> UserError:
    # Pyro appends every site's shapes to a shape error ("Trace Shapes: ..."): one line keeps the error itself
    text = " ".join(str(err).split("Trace Shapes:")[0].split()) or type(err).__name__
    at = f" after site {last.name!r}" if last.name else " before its first site"
    if particles and last.name and last.shape and last.shape[0] == particles:
        alone = tuple(last.shape[1:])
        return UserError(
            f"{where}: {what} fails{at}: {type(err).__name__}: {text[:200]}; site {last.name!r} has shape "
            f"{last.shape} with the K = {particles} particles in front, where the program expects {alone}: "
            f"take batch dims from the value ({last.name}.shape[:-1]), not from x.shape[0]"
        )
    return UserError(f"{where}: {what} fails{at}: {type(err).__name__}: {text[:300]}")


def _run(where: str, what: str, fn: Callable, *args, particles: int = 0, **kwargs):
    """``fn(*args, **kwargs)``; what it raises becomes one line saying what failed where (``particles``: K in front)."""
    last = LastSite()
    try:
        with last:
            return fn(*args, **kwargs)
    except UserError as err:  # the bench's own refusal (an objective's soundness check): say whose
        raise UserError(f"{where}: {err}") from None
    except Exception as err:  # noqa: BLE001 - whatever the user's program raises becomes one line
        raise _failure(where, what, last, err, particles) from None


def _structure(where: str, guide_trace, model_trace, batch: int, parameters: set[int], name: str = DATA_PLATE) -> None:
    """The rules of :mod:`ppl_vae.contracts` that a trace can show; ``name``: the programs' name of the data plate."""
    for role, trace in (("guide", guide_trace), ("model", model_trace)):
        plate = trace.nodes.get(name)
        if plate is not None and site_is_subsample(plate) and plate["fn"].size != batch:
            raise UserError(
                f"{where}: the {role}'s plate {name!r} has size {plate['fn'].size} on a batch of {batch}; "
                f"use pyro.plate({name!r}, x.shape[0]) (the bench scales minibatches itself)"
            )
        for site in sample_sites(trace):
            frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]  # the user's plate, renamed
            if not frames:  # a global site: counted once per data set
                inside = [f"{f.name!r} (size {f.size})" for f in site["cond_indep_stack"] if f.vectorized]
                where_it_is = f"inside only {', '.join(inside)}" if inside else "outside every plate"
                if site["is_observed"]:
                    raise UserError(
                        f"{where}: observed {role} site {site['name']!r} is {where_it_is}, not in the plate over "
                        f"the batch pyro.plate({name!r}, x.shape[0]); every observed site must be inside it"
                    )
                if site["infer"].get("enumerate") == "parallel":
                    raise UserError(
                        f"{where}: enumerated {role} site {site['name']!r} is {where_it_is}; the bench sums out "
                        f"enumerated sites of the plate {name!r} only"
                    )
                continue
            if frames[0].size not in (batch, -1, None):  # -1: pyro.plate("data") without a size broadcasts
                raise UserError(
                    f"{where}: the {role}'s plate {name!r} has size {frames[0].size} on a batch of {batch}; "
                    f"use pyro.plate({name!r}, x.shape[0]) (the bench scales minibatches itself)"
                )
            if site["infer"].get("enumerate") == "parallel" and not site["is_observed"]:
                nested = [f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != DATA_PLATE]
                if nested:
                    raise UserError(
                        f"{where}: enumerated {role} site {site['name']!r} sits in plate(s) {', '.join(nested)} "
                        f"inside {name!r}; the bench sums out enumerated sites of the data plate only"
                    )
        for site in trace.nodes.values():
            if site["type"] != "param":
                continue
            value = site["value"]
            unconstrained = value.unconstrained() if hasattr(value, "unconstrained") else None
            if id(value) not in parameters and id(unconstrained) not in parameters:
                raise UserError(
                    f"{where}: pyro.param site {site['name']!r} is not a parameter of the program's modules, so it "
                    "would be neither trained nor saved; make it an nn.Parameter of the module (or use pyro.module)"
                )
    for site in latent_sites(guide_trace):
        other = model_trace.nodes.get(site["name"])
        if other is not None and other["type"] == "sample" and is_global(site) != is_global(other):
            inside, outside = ("model", "guide") if is_global(site) else ("guide", "model")
            raise UserError(
                f"{where}: site {site['name']!r} is inside the plate {name!r} in the {inside} and outside it in the "
                f"{outside}; a global latent sits outside the plate in both programs, a local one inside"
            )
    check_latent_names(where, guide_trace, model_trace)


def check_latent_names(where: str, guide_trace, model_trace) -> None:
    """Refuse a pair whose guide does not sample its model's latent sites under the same names; a model-only
    site is allowed where it is enumerated in parallel (summed out, not guessed)."""
    guide_latents = {s["name"] for s in latent_sites(guide_trace)}
    model_latents = {
        s["name"]
        for s in latent_sites(model_trace)
        if not (s["infer"].get("enumerate") == "parallel" and s["name"] not in guide_trace.nodes)
    }
    extra, missing = sorted(guide_latents - model_latents), sorted(model_latents - guide_latents)
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"the model's latent site(s) {', '.join(map(repr, missing))} are not sampled by the guide")
        if extra:
            parts.append(f"the guide samples {', '.join(map(repr, extra))}, which the model does not have as latents")
        raise UserError(
            f"{where}: {'; '.join(parts)}; model and guide must share latent site names "
            "(or mark a model-only discrete site infer={'enumerate': 'parallel'})"
        )


def check_params(program, x: torch.Tensor, **inputs) -> None:
    """Refuse ``pyro.param`` sites that the optimizer, holding the modules' parameters, would never step.

    Nothing is drawn from the RNG and nothing is written to Pyro's param store.
    """
    with rng_untouched(x):
        foreign = foreign_params(program.model, program.guide, program, x, **inputs)
    if foreign:
        raise UserError(
            f"pyro.param site(s) {', '.join(foreign)} are not parameters of the program's modules, so training "
            "would not change them; make them nn.Parameters of a module the program holds (registered with "
            "pyro.module or a PyroModule)"
        )


def _global_shapes(where: str, model, guide, x: torch.Tensor, inputs: dict, traces, name: str) -> None:
    """Refuse a global site whose shape follows the batch: a local latent written outside the plate."""
    sites = [(role, s) for role, tr in zip(("guide", "model"), traces) for s in sample_sites(tr) if is_global(s)]
    if not sites:
        return
    index = torch.tensor([0, 1, 0], device=x.device)
    rows = rows_of(inputs, index)
    on = "on three rows (is a site's shape the batch's?)"
    guide_trace = _run(where, f"the guide {on}", poutine.trace(guide).get_trace, x[index], **rows)
    replayed = poutine.trace(poutine.replay(model, trace=guide_trace))
    model_trace = _run(where, f"the model {on}", replayed.get_trace, x[index], **rows)
    for role, site in sites:
        other = (guide_trace if role == "guide" else model_trace).nodes.get(site["name"])
        if other is not None and other["value"].shape != site["value"].shape:
            raise UserError(
                f"{where}: {role} site {site['name']!r} is outside the plate over the batch, yet its shape "
                f"{tuple(site['value'].shape)} follows the batch's size; put it inside pyro.plate({name!r}, "
                "x.shape[0]) (only a global latent, the same for every point, sits outside)"
            )


def check_program(
    program: nn.Module,
    objective,
    batches: list[tuple[str, torch.Tensor, dict]],
    where: str = "the program",
    beta: float = 1.0,
    data_plate: str = "",
) -> int:
    """Run ``program`` on trial batches ``(kind, x, inputs)``; a one-line :class:`UserError` if it breaks the contract.

    ``kind`` names the batch in messages ("labelled", "unlabelled"); ``x`` needs two rows at
    least (only the first two are used); ``objective`` is an :class:`~ppl_vae.inference.objectives.Objective`;
    ``beta`` a KL weight other than 1 the run will use, so that the objective is tried with it.
    A program with a ``data_plate`` attribute (:class:`ppl_vae.runs.build.ModelAndGuide`) gets the name
    of its plate over the batch set there: ``data_plate`` (``--data-plate``), or the plate found
    by its size (:func:`~ppl_vae.inference.plates.find_data_plate`). Nothing is drawn from the
    RNG. Returns the pair's plate nesting.
    """
    if hasattr(program, "data_plate"):
        program.data_plate = DATA_PLATE  # the programs as written, while their plate is looked for
        kind, x, inputs = batches[0]
        model, guide = local_params(program.model), local_params(program.guide)
        with pyro.validation_enabled(False):
            found = _run(
                where, "looking for the plate over the batch", find_data_plate, model, guide, x, data_plate, **inputs
            )
        program.data_plate = found
    plate = getattr(program, "data_plate", DATA_PLATE)
    model, guide = local_params(program.model), local_params(program.guide)  # the param store left alone
    parameters = {id(p) for p in program.parameters()}
    nesting = 0
    for kind, x, inputs in batches:
        x = x[:2]
        inputs = rows_of(inputs, slice(0, 2))
        on = f"on a {kind} trial batch" if kind else "on a trial batch"
        with rng_untouched(x), pyro.validation_enabled(True):
            guide_trace = _run(where, f"the guide {on}", poutine.trace(guide).get_trace, x, **inputs)
            replayed = poutine.trace(poutine.replay(model, trace=guide_trace))
            model_trace = _run(where, f"the model {on}", replayed.get_trace, x, **inputs)
            _structure(where, guide_trace, model_trace, x.shape[0], parameters, plate)
            _global_shapes(where, model, guide, x, inputs, (guide_trace, model_trace), plate)
            nesting = max_plate_nesting(model, guide, x, **inputs)
            lw = _run(
                where,
                f"the importance sampler {on} with K = {TRIAL_PARTICLES} particles in one pass "
                "(programs must broadcast over a leading particle dimension)",
                log_weights,
                model,
                guide,
                x,
                TRIAL_PARTICLES,
                nesting,
                particles=TRIAL_PARTICLES,
                **inputs,
            )
            for name, value in (("log-weight", lw.total), ("ELBO", lw.elbo)):
                if not torch.isfinite(value).all():
                    raise UserError(f"{where}: the {name} is not finite {on}; check the likelihood's support")
            # what pictures and predictive checks run: sampled draws (discrete sites drawn, not summed), prior draws
            what = f"the guide and model with K = {TRIAL_PARTICLES} sampled draws {on}"
            _run(
                where,
                what,
                replayed_traces,
                model,
                guide,
                x,
                TRIAL_PARTICLES,
                nesting,
                particles=TRIAL_PARTICLES,
                **inputs,
            )
            prior = poutine.trace(poutine.uncondition(model)).get_trace
            with default_dtype(x.dtype):
                _run(where, f"the model drawing from its prior {on}", prior, x, **inputs)
            _run(where, f"the {objective.name} objective {on}", objective.check, model, guide, x, **inputs)
            if beta != 1.0:
                what = f"the {objective.name} objective with beta = {beta:g} {on}"
                with torch.enable_grad():
                    _run(where, what, objective, model, guide, x, beta=beta, **inputs)
    return nesting
