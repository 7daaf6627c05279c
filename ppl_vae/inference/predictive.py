r"""Decodings and predictive draws, read off program traces (never off a model's attributes).

A model may observe any number of sites; the one whose value *is* the batch ``x`` is the
**data site** (for the canonical program, ``"x"``): the mean of its distribution in a replayed
model trace is the decoding f(z), the x̂ whose squared distance to x is the MSE, and the
pictures show it. ``pyro.deterministic`` sites and ``pyro.factor`` terms are not observations.

Elements an observed site does not model — masked by ``poutine.mask``, ``obs_mask`` or a
distribution's ``.mask(m)`` (a conditional VAE observing three quadrants of an image) — are
given, not predicted: decodings and predictive draws keep the observed value there.

A conditional program may observe only a part of x (Pyro's ``examples/cvae``: the site holds
``x[:, out]``, the pixels to predict, the others are what it conditions on). Which columns of x
such a site holds is found by running the model once on x's column numbers
(:func:`data_columns`); its decodings are then x with those columns decoded.

A guide's discrete site predicts too: :func:`classify` reads its most probable class for each row.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import MaskedDistribution

from ..contracts import rows_of
from .importance import (
    Frame,
    draw_globals,
    global_latent_sites,
    global_names,
    local_latent_sites,
    max_plate_nesting,
    replayed_traces,
    rng_untouched,
    sample_sites,
)
from .params import local_params

__all__ = [
    "observed_sites",
    "data_site",
    "data_columns",
    "element_mask",
    "site_mean",
    "reconstruct",
    "prior_decode",
    "prior_predictive",
    "posterior_predictive",
    "simulate",
    "Predictive",
    "Simulated",
    "repeat_rows",
    "default_dtype",
    "classify",
]


def _is_data_bearing(site: dict) -> bool:
    return not site["infer"].get("_deterministic") and not isinstance(site["fn"], dist.Unit)


def observed_sites(trace) -> list[dict]:
    """The observed sample sites that carry data: not ``pyro.deterministic``, not ``pyro.factor``."""
    return [
        s for s in sample_sites(trace) if (s["is_observed"] or s["infer"].get("was_observed")) and _is_data_bearing(s)
    ]


def _value(site: dict) -> torch.Tensor:
    """The observed value of a site (also after ``poutine.uncondition`` drew a new one)."""
    return site["infer"]["obs"] if site["infer"].get("was_observed") else site["value"]


def data_site(trace, x: torch.Tensor) -> dict | None:
    """The observed site whose value is ``x`` (the same tensor, or equal values in any shape), or ``None``."""
    candidates = [s for s in observed_sites(trace) if _value(s) is x]
    if not candidates:
        candidates = [
            s
            for s in observed_sites(trace)
            if _value(s).numel() == x.numel() and torch.equal(_value(s).reshape(x.shape), x)
        ]
    named = [s for s in candidates if s["name"] == "x"]
    return (named or candidates or [None])[0]


def element_mask(site: dict) -> torch.Tensor | None:
    """Where the site's value is modelled: a bool tensor broadcastable to the value, or ``None`` (everywhere).

    Combines ``poutine.mask``/``obs_mask`` (over the batch) with ``.mask(m)`` of a distribution
    inside ``.to_event(n)`` (which may cover event elements, e.g. pixels).
    """
    fn, masks = site["fn"], []
    if isinstance(site["mask"], torch.Tensor):
        masks.append(site["mask"].reshape(site["mask"].shape + (1,) * fn.event_dim))
    elif site["mask"] is False:
        masks.append(torch.tensor(False))
    while True:
        if isinstance(fn, MaskedDistribution):
            mask = fn._mask if isinstance(fn._mask, torch.Tensor) else torch.tensor(bool(fn._mask))
            masks.append(mask.reshape(mask.shape + (1,) * fn.event_dim))
            fn = fn.base_dist
        elif isinstance(fn, torch.distributions.Independent):
            fn = fn.base_dist
        else:
            break
    if not masks:
        return None
    mask = masks[0]
    for m in masks[1:]:
        mask = mask & m
    return mask


def site_mean(site: dict) -> torch.Tensor | None:
    """The mean of the site's distribution, or ``None`` where it has none in closed form."""
    try:
        return site["fn"].mean
    except (NotImplementedError, AttributeError):
        return None


def _given_where_masked(site: dict, predicted: torch.Tensor) -> torch.Tensor:
    """``predicted`` where the site is modelled, the observed value elsewhere."""
    mask = element_mask(site)
    return predicted if mask is None else torch.where(mask.to(predicted.device), predicted, _value(site))


@torch.no_grad()
def _replayed(model, guide, x: torch.Tensor, num_particles: int, **inputs):
    return replayed_traces(model, guide, x, num_particles, max_plate_nesting(model, guide, x, **inputs), **inputs)


@torch.no_grad()
def data_columns(model, x: torch.Tensor, **inputs) -> tuple[str, torch.Tensor] | None:
    """The observed site that holds some of x's columns, and which: ``(name, columns (d,) int64)``, or ``None``.

    The model runs once on rows whose every value is its column's number 1..D (with Pyro's
    validation off): a site whose value holds only such numbers, the same in every row, is a
    selection of x's columns (a slice, a mask, a gather), and its values say which. A site holding
    a function of x, or a model that fails on such rows, gives ``None``.
    """
    n, d = x.shape[0], x[0].numel()
    if d >= 2**24:  # column numbers must be exact in float32
        return None
    numbers = torch.arange(1, d + 1, device=x.device, dtype=x.dtype).expand(n, d).reshape(x.shape)
    try:
        with pyro.validation_enabled(False), default_dtype(x.dtype):
            trace = poutine.trace(poutine.uncondition(local_params(model))).get_trace(numbers, **inputs)
    except Exception:  # noqa: BLE001 - a program that cannot run on column numbers holds no columns we can find
        return None
    for site in observed_sites(trace):
        value = _value(site)
        if value.dim() == 0 or value.shape[0] != n or value[0].numel() >= d:
            continue
        rows = value.reshape(n, -1)
        columns = rows[0].round()
        if torch.equal(rows, columns.expand_as(rows)) and bool(((columns >= 1) & (columns <= d)).all()):
            return site["name"], columns.long() - 1
    return None


def _with_columns(x: torch.Tensor, columns: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, D)`` broadcast to the leading dims of ``values`` ``(..., B, d)``, ``columns`` replaced by them."""
    out = x.reshape(x.shape[0], -1).expand(values.shape[:-1] + (-1,)).clone()
    out[..., columns.to(out.device)] = values.to(out.dtype)
    return out


def reconstruct(model, guide, x: torch.Tensor, num_particles: int = 1, **inputs) -> torch.Tensor | None:
    """Decodings E[x | z] of ``num_particles`` draws z ~ q(z | x): ``(K, B, D)``.

    ``None`` where no observed site holds x or some of its columns (:func:`data_columns`).
    """
    _, model_trace = _replayed(model, guide, x, num_particles, **inputs)
    site = data_site(model_trace, x)
    if site is not None:
        value = _value(site)
        mean = _given_where_masked(site, site["fn"].mean.expand((num_particles,) + value.shape))
        return mean.reshape((num_particles,) + x.shape)
    part = data_columns(model, x, **inputs)
    if part is None:
        return None
    site = model_trace.nodes[part[0]]
    value = _value(site)
    mean = _given_where_masked(site, site["fn"].mean.expand((num_particles,) + value.shape))
    return _with_columns(x, part[1], mean.reshape(num_particles, x.shape[0], -1)).reshape((num_particles,) + x.shape)


class Predictive(NamedTuple):
    """Posterior draws: latents ``{site: (K, B, ...)}``, replicated observed sites and their log-likelihoods.

    With global latents, draw k holds its own θ_k ~ q(θ) (``global_latents``, ``{site: (K, *shape)}``)
    and the local draws and replicates of that particle are given θ_k.
    """

    latents: dict[str, torch.Tensor]
    replicates: dict[str, torch.Tensor]  # {site: (K, B, ...)} x' ~ p(x | z, θ)
    log_lik: dict[str, torch.Tensor]  # {site: (K, B)} log p(x | z, θ) of the observed values
    observed: dict[str, torch.Tensor]  # {site: (B, ...)} the observed values
    data: str | None  # the name of the data site
    global_latents: dict[str, torch.Tensor] | None = None  # {site: (K, *shape)} θ of each draw


@torch.no_grad()
def posterior_predictive(model, guide, x: torch.Tensor, num_particles: int = 1, **inputs) -> Predictive:
    """Draws z ~ q(z|x), then x' ~ p(x | z) and log p(x | z) for every observed site, with the program's inputs."""
    nesting = max_plate_nesting(model, guide, x, **inputs)
    guide_trace, model_trace = replayed_traces(model, guide, x, num_particles, nesting, **inputs)
    model_trace.compute_log_prob()
    frame = Frame(nesting, 0, num_particles, x.shape[0])
    replicates, log_lik, observed = {}, {}, {}
    for site in observed_sites(model_trace):
        shape = (num_particles,) + _value(site).shape
        replicates[site["name"]] = _given_where_masked(site, site["fn"].sample().expand(shape))
        log_lik[site["name"]] = frame.term(site).expand(num_particles, x.shape[0])
        observed[site["name"]] = _value(site)
    latents = {s["name"]: s["value"] for s in local_latent_sites(guide_trace)}
    theta = {s["name"]: _per_draw(s, num_particles, nesting) for s in global_latent_sites(guide_trace)}
    data = data_site(model_trace, x)
    return Predictive(latents, replicates, log_lik, observed, data and data["name"], theta)


def _per_draw(site: dict, num_particles: int, nesting: int) -> torch.Tensor:
    """A global site's value as ``(K, *shape)``: the particle dim in front, the plates' broadcast dims of size 1 out."""
    value, event = site["value"], site["fn"].event_dim
    rank = value.dim() - event  # its batch dims: the particle plate's and the program's plates', at most nesting + 1
    value = value.reshape((1,) * (nesting + 1 - rank) + value.shape)  # (K or 1, plates..., *event)
    value = value.expand((num_particles,) + value.shape[1:])
    shape = [n for i, n in enumerate(value.shape[1:], 1) if i > nesting or n != 1]
    return value.reshape((num_particles, *shape))


def _placeholder(n: int, data_dim: int, device, dtype, like: torch.Tensor | None) -> torch.Tensor:
    """``n`` rows of ``like`` (repeated as needed), or zeros: what the model runs on for its shape and its givens."""
    if like is None:
        return torch.zeros(n, data_dim, device=device, dtype=dtype)
    return repeat_rows({"x": like}, n)["x"]


def repeat_rows(inputs: dict, n: int) -> dict:
    """The inputs repeated (cycling through their rows) to ``n`` rows; ``None`` stays ``None``."""
    return {
        k: v.repeat((-(-n // len(v)),) + (1,) * (v.dim() - 1))[:n] if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }


class Simulated(NamedTuple):
    """Draws from the prior predictive: latents by site, x (or ``None``) and every observed site.

    ``x`` is the data site's draw, or the given rows with a column site's draw in its columns
    (:func:`data_columns`), or ``None`` where no observed site holds x or a part of it.
    """

    latents: dict[str, torch.Tensor]
    x: torch.Tensor | None  # (n, D)
    observed: dict[str, torch.Tensor]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None):
    """Run with torch's default dtype set to ``dtype`` (the data's).

    Sampling from a Pyro autoregressive flow inverts it on tensors built with the default dtype,
    so a float64 program could not draw from a flow prior otherwise.
    """
    if dtype is None or dtype == torch.get_default_dtype():
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@torch.no_grad()
def simulate(model, n: int, data_dim: int, device="cpu", dtype=None, like=None, **inputs) -> Simulated:
    """Draws z ~ p(z) and every observed site from p(· | z), elements the model does not model kept from ``like``.

    The model runs on ``like`` (data rows, repeated to ``n``) or on zeros; ``inputs`` (labels…)
    are repeated to ``n`` rows too.
    """
    placeholder = _placeholder(n, data_dim, device, dtype, like)
    with default_dtype(placeholder.dtype):
        trace = poutine.trace(poutine.uncondition(local_params(model))).get_trace(placeholder, **repeat_rows(inputs, n))
    observed = {s["name"]: _given_where_masked(s, s["value"]) for s in observed_sites(trace)}
    data = data_site(trace, placeholder)
    x = None if data is None else observed[data["name"]].reshape(placeholder.shape)
    part = None if data is not None else data_columns(model, placeholder, **repeat_rows(inputs, n))
    if part is not None:  # the simulated columns in the given rows: the x a conditional program's guide sees
        x = _with_columns(placeholder, part[1], observed[part[0]].reshape(n, -1)).reshape(placeholder.shape)
    # the local latents: global ones are one draw for all n rows (from p(θ), or held at a draw of q(θ))
    latents = {s["name"]: s["value"] for s in local_latent_sites(trace) if not s["infer"].get("was_observed")}
    return Simulated(latents, x, observed)


def prior_predictive(model, n: int, data_dim: int, device="cpu", dtype=None, like=None, **inputs):
    """Draws z ~ p(z) (a dict by site) and x ~ p(x | z) ``(n, D)`` of the data site, the observation released."""
    sim = simulate(model, n, data_dim, device, dtype, like, **inputs)
    return sim.latents, sim.x


@torch.no_grad()
def prior_decode(
    model, n: int, data_dim: int, device="cpu", dtype=None, like=None, guide=None, **inputs
) -> torch.Tensor | None:
    """Decodings E[x | z] of n draws z ~ p(z): ``(n, D)`` (``None`` without a data site).

    With a ``guide``, the model's global latents θ are drawn once from the guide's q(θ) (the fitted
    posterior, not the prior): the decodings are of z ~ p(z | θ), θ ~ q(θ).
    """
    placeholder = _placeholder(n, data_dim, device, dtype, like)
    inputs = repeat_rows(inputs, n)
    if guide is not None and global_names(model, guide, placeholder[:2], **repeat_rows(inputs, 2)):
        rows = repeat_rows(inputs, 2)
        nesting = max_plate_nesting(model, guide, placeholder[:2], **rows)
        model = draw_globals(guide, placeholder[:2], 1, nesting, **rows).hold(model, 0)
    with default_dtype(placeholder.dtype):
        trace = poutine.trace(local_params(model)).get_trace(placeholder, **inputs)
    site = data_site(trace, placeholder)
    if site is not None:
        return _given_where_masked(site, site["fn"].mean.expand(_value(site).shape)).reshape(placeholder.shape)
    part = data_columns(model, placeholder, **inputs)
    if part is None:
        return None
    site = trace.nodes[part[0]]
    mean = _given_where_masked(site, site["fn"].mean.expand(_value(site).shape))
    return _with_columns(placeholder, part[1], mean.reshape(n, -1)).reshape(placeholder.shape)


@torch.inference_mode()
def classify(guide, x: torch.Tensor, site: str = "y", batch_size: int = 1024, **inputs) -> torch.Tensor | None:
    """The most probable value of the guide's discrete site ``site`` for each row of ``x``, as a class index ``(N,)``.

    ``None`` if the guide has no such latent site, or its distribution has no finite support.
    One-hot values are read as the index of their 1. Draws nothing from the RNG (the guide's
    other sites are sampled on a forked generator), so the analysis after it draws what it did.
    """
    out = []
    with rng_untouched(x):
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            trace = poutine.trace(local_params(guide)).get_trace(x[rows], **rows_of(inputs, rows))
            node = trace.nodes.get(site)
            if node is None or node["type"] != "sample" or node["is_observed"]:
                return None
            fn = node["fn"]
            if not getattr(fn, "has_enumerate_support", False):
                return None
            support = fn.enumerate_support(expand=False)  # (C, 1..., event)
            best = fn.log_prob(support).reshape(support.shape[0], -1).argmax(0)  # (b,)
            values = support.reshape((support.shape[0],) + support.shape[1 + len(fn.batch_shape) :])[best]
            out.append(values.argmax(-1) if fn.event_dim == 1 else values.reshape(-1).long())
    return torch.cat(out)
