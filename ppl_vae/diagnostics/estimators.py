r"""Held-out numbers from importance sampling: log p(x), ELBO, rate, distortion, MSE, active units, PSIS k̂.

For each test point :math:`x_i` and K draws :math:`z_{ik} \sim q(z|x_i)` the shared
log-weights give

.. math::

    \widehat{\log p}(x_i) = \log \frac1K \sum_k w_{ik}, \quad
    \mathrm{ELBO}_i = \frac1K \sum_k \log w_{ik}, \quad
    \mathrm{KL}_i = -\frac1K \sum_k \log\frac{p(z_{ik})}{q(z_{ik}|x_i)}, \quad
    D_i = -\frac1K \sum_k \log p(x_i|z_{ik}),

computed in chunks over points and particles, so memory is bounded whatever K and N are.
Enumerated discrete sites are summed out exactly (see :mod:`ppl_vae.inference.importance`);
distortion and MSE are also reported per observed site, the MSE over the elements a site
models (masks respected).
PSIS (Vehtari et al. 2024, arXiv:1507.02646) fits a generalized Pareto to the largest weights of
each point: its shape k̂ says whether the IWAE estimate can be trusted (Yao et al. 2018,
arXiv:1802.02538: < 0.5 good, 0.5–0.7 usable, > 0.7 unreliable). The Monte Carlo standard error
of each :math:`\widehat{\log p}(x_i)` follows from the delta method on the mean of the weights,

.. math::

    \mathrm{SE}\big(\widehat{\log p}(x_i)\big) \approx \frac{\mathrm{sd}(w_{i\cdot})}{\sqrt K\,\overline{w_{i\cdot}}}
    = \sqrt{\frac{\sum_k (K \tilde w_{ik} - 1)^2}{K (K - 1)}}, \qquad
    \tilde w_{ik} = \frac{w_{ik}}{\sum_l w_{il}},

computed from the normalised weights (a softmax of the log-weights, so nothing overflows);
:math:`1/\sum_k \tilde w_{ik}^2` is the effective sample size. It is trustworthy only where the
weights' variance is finite, i.e. where k̂ < 0.5; above 0.7 it understates the error.

A program with global latents θ (sites outside the data plate) is scored by its posterior
predictive under the fitted guide: S draws :math:`\theta_s \sim q(\theta)`, shared by all test
points, and an IWAE-K over the local latents given each,

.. math::

    \widehat{\log p}(x_i) = \log \frac1S \sum_s \hat p(x_i \mid \theta_s), \qquad
    \hat p(x_i \mid \theta_s) = \frac1K \sum_k \frac{p(x_i, z_{isk} \mid \theta_s)}{q(z_{isk} \mid x_i, \theta_s)},

a consistent estimate of :math:`\log \mathbb E_{q(\theta)}[p(x_i \mid \theta)]` (biased low for
finite S and K, as IWAE is). Its Monte Carlo SE is the delta method on the S estimates
:math:`\hat p(x_i|\theta_s)`, whose spread holds both the outer (θ) and the inner (z) noise; the
inner part alone is :math:`\sqrt{\sum_s \tilde v_s^2\, \mathrm{SE}_{is}^2}` with
:math:`\tilde v_s` the share of draw s in the sum and :math:`\mathrm{SE}_{is}` the inner
IWAE's. The ELBO, rate and distortion are averages over all S·K draws: :math:`\mathbb E_{q(\theta)}` of
the local ones. PSIS k̂ is fitted to the inner weights of each draw; a point reports the largest.

Active units follow Burda
et al. 2016: :math:`\operatorname{Cov}_x(\mathbb E_q[z_u]) > 0.01`, with :math:`\mathbb E_q[z]` the
mean of the guide's own distribution where it has one (exact for a Gaussian encoder at any
K; a Monte Carlo average of a few draws would add its noise to the covariance and count
collapsed units as active) and of the draws where it has none (flows).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pyro
import torch
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from ..contracts import rows_of
from ..inference.compiled import sampler_kind
from ..inference.importance import (
    draw_globals,
    global_names,
    is_enumerated,
    local_latent_sites,
    log_mean_exp,
    log_weights,
    max_plate_nesting,
    rng_untouched,
)
from ..inference.predictive import element_mask, observed_sites, site_mean
from ..inference.recording import Recorder, joined_inputs, split_inputs
from .statistics import mean_se
from .summary import Summary

__all__ = [
    "PointEstimates",
    "importance_sample",
    "enumeration_size",
    "psis_khat",
    "active_units",
    "summarize",
    "iwae_mc_se",
    "ACTIVE_THRESHOLD",
]

ACTIVE_THRESHOLD = 0.01
ROWS_PER_CHUNK = 1 << 13  # particles x points decoded at once: bounds memory, stays cache-friendly


@dataclass
class PointEstimates:
    """Per-point results of importance sampling with K particles."""

    log_w: torch.Tensor  # (N, K) log-weights, float64; with global latents (N, S, K): K per draw θ_s
    log_px: torch.Tensor  # (N,) IWAE-K
    elbo: torch.Tensor  # (N,)
    kl: torch.Tensor  # (N,) Monte Carlo rate
    distortion: torch.Tensor  # (N,) -E_q log p(x|z), all observed sites
    mse: torch.Tensor  # (N,) E_q of the mean squared error of the decodings, over every modelled observed element
    latent_mean: torch.Tensor  # (N, total latent dims) E_q[z], continuous latent sites concatenated
    latent_var: torch.Tensor  # (N, total latent dims) Var_q[z]
    distortion_by_site: dict[str, torch.Tensor] = field(default_factory=dict)  # {site: (N,)}
    mse_by_site: dict[str, torch.Tensor] = field(default_factory=dict)  # {site: (N,)}

    @property
    def k(self) -> int:
        return self.log_w.shape[-1]

    @property
    def global_draws(self) -> int:
        """S, the draws θ_s ~ q(θ) shared by the points (0: the program has no global latent)."""
        return self.log_w.shape[1] if self.log_w.dim() == 3 else 0

    @property
    def log_px_mc_se(self) -> torch.Tensor:
        """(N,) Monte Carlo SE of each log_px: :func:`iwae_mc_se` (over the S inner estimates with global latents)."""
        if self.log_w.dim() == 2:
            return iwae_mc_se(self.log_w)
        return iwae_mc_se(log_mean_exp(self.log_w, dim=-1))

    @property
    def log_px_mc_se_inner(self) -> torch.Tensor:
        """(N,) the part of the Monte Carlo SE that comes from the inner IWAE (all of it without global latents)."""
        if self.log_w.dim() == 2:
            return iwae_mc_se(self.log_w)
        n, S, K = self.log_w.shape
        share = torch.softmax(log_mean_exp(self.log_w, dim=-1), dim=-1)  # (N, S) of each draw in Σ_s p̂(x|θ_s)
        inner = iwae_mc_se(self.log_w.reshape(n * S, K)).reshape(n, S)
        return (share.square() * inner.square()).sum(-1).sqrt()


def iwae_mc_se(log_w: torch.Tensor) -> torch.Tensor:
    r"""Delta-method Monte Carlo SE of :math:`\log \frac1K \sum_k w_k` for each row of ``log_w`` ``(N, K)``.

    :math:`\mathrm{sd}(w) / (\sqrt K \bar w)` with the sample SD (ddof 1), from the normalised
    weights :math:`\tilde w = \operatorname{softmax}(\log w)`: :math:`\sqrt{\sum_k (K\tilde w_k - 1)^2 / (K(K-1))}`
    (:math:`K\tilde w_k = w_k / \bar w`).
    NaN for K = 1 (one draw has no spread).

    Example:
        >>> iwae_mc_se(torch.zeros(2, 10)).tolist()  # equal weights: log p̂ is exact
        [0.0, 0.0]
    """
    k = log_w.shape[-1]
    if k < 2:
        return torch.full(log_w.shape[:-1], float("nan"), dtype=torch.float64)
    w = torch.softmax(log_w.double(), dim=-1)  # (N, K) normalised weights, each row sums to 1
    return ((k * w - 1).square().sum(-1) / (k * (k - 1))).sqrt()  # (N,)


def _chunk_sizes(n: int, k: int, rows: int) -> tuple[int, int]:
    k_chunk = max(1, min(k, rows))
    n_chunk = max(1, min(n, rows // k_chunk))
    return n_chunk, k_chunk


def enumeration_size(model, guide, x: torch.Tensor, nesting: int, **inputs) -> int:
    """How many combinations of enumerated values a draw carries (1 without enumerated sites; draws nothing).

    Traces one particle of the rows ``x`` (give few).
    """
    with rng_untouched(x):
        frame = log_weights(model, guide, x, 1, nesting, return_traces=True, **inputs).frame
    return 1 if frame.weights is None else frame.weights.numel() // (frame.K * frame.B)


class _Moments:
    """Running sums over particles of per-point, per-site quantities (float64, on the CPU)."""

    def __init__(self, n: int):
        self.n, self.sums = n, {}

    def add(self, key, rows: slice, value: torch.Tensor) -> None:  # value (b, ...) already summed over particles
        if key not in self.sums:
            self.sums[key] = torch.zeros((self.n,) + value.shape[1:], dtype=torch.float64)
        self.sums[key][rows] += value.double().cpu()

    def get(self, key, default: torch.Tensor) -> torch.Tensor:
        return self.sums.get(key, default)


def _observed_terms(traced, terms: dict) -> None:
    """Σ over particles of each observed site's log-likelihood, squared error and modelled-element count.

    With one observed site (and no model-enumerated site summed with it) its log-likelihood is
    the distortion's already: it is not computed twice.
    """
    frame, model_trace = traced.frame, traced.model_trace
    sites = observed_sites(model_trace)
    alone = len(sites) == 1 and frame.weights is None
    for site in sites:
        name, value = site["name"], site["value"]
        log_lik = -traced.weights.log_lik if alone else -frame.expect(frame.term(site)).expand(frame.K, frame.B)
        terms[("distortion", name)] = log_lik.sum(0)
        mean = site_mean(site)
        if mean is None or not torch.is_floating_point(mean):
            continue
        mask = element_mask(site)
        error = (mean - value).square_()  # (E..., K, B, ...) squared error of the decoding
        events = tuple(range(-site["fn"].event_dim, 0))
        if mask is None:  # every element modelled: the count is the size of one point's value
            n_el = torch.full((frame.K, frame.B), value.numel() / frame.B, dtype=torch.float64)
        else:
            count = mask.to(error.dtype).expand_as(error)
            error = error * count
            n_el = frame.expect(frame.term(site, count.sum(events) if events else count))
        sse = frame.expect(frame.term(site, error.sum(events) if events else error))  # (K, B)
        terms[("sse", name)] = sse.expand(frame.K, frame.B).sum(0)
        terms[("count", name)] = n_el.expand(frame.K, frame.B).sum(0)


def _latent_terms(traced, terms: dict) -> None:
    """Σ over particles of E_q[z | upstream draws], its square and Var_q[z | upstream draws], per continuous site.

    The guide's own means and variances are used where its distribution has them (exact for
    a Gaussian encoder, whatever K); draws where it does not (flows).
    """
    frame, parts = traced.frame, []
    for site in local_latent_sites(traced.guide_trace):
        if is_enumerated(site) or not torch.is_floating_point(site["value"]):
            continue
        event = site["fn"].event_dim
        mean = site_mean(site)
        try:
            var = site["fn"].variance if mean is not None else None
        except (NotImplementedError, AttributeError):
            var = None
        if mean is None or var is None:
            mean, var = site["value"], torch.zeros_like(site["value"])
        shape = site["value"].shape
        m = frame.by_datapoint(mean.expand(shape), site, event)  # (E..., K, B, F)
        v = frame.by_datapoint(var.expand(shape), site, event)
        parts.append([frame.expect(t).expand(frame.K, frame.B, -1) for t in (m, m.square(), v)])
    if not parts:
        return
    first, second, within = (parts[0][i] if len(parts) == 1 else torch.cat([p[i] for p in parts], -1) for i in range(3))
    terms["z"] = first.sum(0)
    terms["z2"] = second.sum(0)  # E[m²]: with E[m], the spread between draws
    terms["within"] = within.sum(0)  # E[Var(z | upstream draws)]


def _chunk_terms(model, guide, nesting: int, xb: torch.Tensor, kk: int, inputs: dict, theta=None) -> dict:
    """One chunk's sums over its ``kk`` particles, per point: ``{"log_w": (b, kk), key: (b, ...)}``.

    ``theta``: ``(draws, s)``, the global latents held at draw s (:class:`~ppl_vae.inference.importance.GlobalDraws`).
    """
    if theta is not None:
        draws, s = theta
        model, guide = draws.hold(model, s, kk), draws.hold(guide, s, kk)
    traced = log_weights(model, guide, xb, kk, nesting, return_traces=True, **inputs)
    lw = traced.weights
    terms = {"log_w": lw.total.T, "log_lik": lw.log_lik.sum(0), "log_ratio": lw.log_ratio.sum(0)}
    _observed_terms(traced, terms)
    _latent_terms(traced, terms)
    return terms


class _Chunks:
    """The sampler's chunks: eager, or recorded once for the first chunk's shape and replayed or compiled.

    The chunks repeat one shape (the last point and particle chunks may be ragged, and run
    eagerly), so a chunk's tensor operations go through the recording lifecycle the training step
    does (:class:`~ppl_vae.inference.recording.Recorder`), random draws left to the eager generator:
    a compiled chunk draws what an eager one would. ``auto`` compiles when the evaluation has enough
    full chunks to repay it (:func:`~ppl_vae.inference.compiled.sampler_kind`: a count, not a
    timing); a program that cannot be recorded, or whose recording disagrees with it, stays eager
    (``on`` refuses it). ``say`` is told the sampler that runs, and again if that changes.
    """

    def __init__(self, model, guide, nesting: int, mode: str, full_chunks: int, say=None):
        self.model, self.guide, self.nesting, self.say = model, guide, nesting, say
        kind, forced, self.note = sampler_kind(mode, full_chunks)
        self.recorder = Recorder(
            self._terms,
            self._terms,
            kind,
            forced=forced,
            flag="--compile-sampler",
            hint="evaluate with --no-compile-sampler",
            what="importance sampler",
            shapes=1,
            replay_pays=False,  # replayed uncompiled, a chunk is no faster than eager: only when asked for
            say=say,
        )
        self.told = kind == "eager"
        if self.told and say is not None:
            say(self.note)

    def _terms(self, static):
        kk, key = static

        def chunk(xb, *values):
            return _chunk_terms(self.model, self.guide, self.nesting, xb, kk, joined_inputs(key, values))

        return chunk

    def __call__(self, xb: torch.Tensor, kk: int, inputs: dict) -> dict:
        key, values = split_inputs(inputs)
        terms = self.recorder((kk, key), xb, *values)
        if terms is not None and not self.told:  # the first chunk was recorded: the sampler is what was chosen
            self.told = True
            if self.say is not None and not self.recorder.reason:  # else it said why it replays uncompiled
                self.say(self.note)
        return terms if terms is not None else _chunk_terms(self.model, self.guide, self.nesting, xb, kk, inputs)


@torch.inference_mode()
def importance_sample(
    model,
    guide,
    x: torch.Tensor,
    k: int = 1000,
    rows: int = ROWS_PER_CHUNK,
    progress: bool = False,
    split_points: bool = True,
    compile: str = "off",
    say=None,
    global_draws: int = 10,
    **inputs,
) -> PointEstimates:
    """Run K importance draws for every row of ``x``, in chunks of about ``rows`` particle-rows.

    ``inputs`` are the points' other inputs (labels ``y`` ``(N,)``, or ``y=None``), sliced with
    ``x``. Enumerated sites multiply the work of a draw; chunks shrink to keep memory bounded.
    ``split_points=False`` keeps all points in every chunk (for per-datapoint guides whose
    parameters are tied to the rows of ``x``) and chunks over particles only. ``compile``
    (auto | on | off) compiles the chunks where there are enough of them to repay it
    (:class:`_Chunks`); ``say(line)`` is
    told which path was taken and why. A program with global latents gets ``global_draws``
    draws θ_s ~ q(θ) shared by all points, K particles each (module docstring); its chunks run eagerly.
    """
    n = x.shape[0]
    first = slice(0, min(n, 2) if split_points else n)  # a per-datapoint guide runs on all its rows only
    nesting = max_plate_nesting(model, guide, x[first], **rows_of(inputs, first))
    rows = max(1, rows // enumeration_size(model, guide, x[first], nesting, **rows_of(inputs, first)))
    n_chunk, k_chunk = _chunk_sizes(n, k, rows) if split_points else (n, max(1, min(k, rows // n)))
    full_chunks = (n // n_chunk) * (k // k_chunk)
    held = global_names(model, guide, x[first], **rows_of(inputs, first))
    S = global_draws if held else 1
    draws = draw_globals(guide, x[first], S, nesting, **rows_of(inputs, first)) if held else None
    if held:
        chunks = None
        if say is not None:
            say(f"eager importance sampler: global site(s) {', '.join(held)} are held at {S} draws θ ~ q(θ)")
    elif split_points:
        chunks = _Chunks(model, guide, nesting, compile, full_chunks, say)
    else:
        chunks = _Chunks(model, guide, nesting, "off", full_chunks)
    log_w = torch.empty(n, S, k, dtype=torch.float64)
    moments = _Moments(n)
    bar = tqdm(
        total=n * k * S,
        desc=f"importance sampling (K={k})",
        unit="draw",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    for s, start in ((s, start) for s in range(S) for start in range(0, n, n_chunk)):
        xb = x[start : start + n_chunk]
        b = xb.shape[0]
        rows_ = slice(start, start + b)
        chunk_inputs = rows_of(inputs, rows_)
        for k0 in range(0, k, k_chunk):
            kk = min(k_chunk, k - k0)
            # shapes and supports are checked on the first chunk; the rest repeat its shapes
            with pyro.validation_enabled(is_validation_enabled() and start == 0 and k0 == 0 and s == 0):
                if draws is None:
                    terms = chunks(xb, kk, chunk_inputs)
                else:
                    terms = _chunk_terms(model, guide, nesting, xb, kk, chunk_inputs, theta=(draws, s))
            log_w[rows_, s, k0 : k0 + kk] = terms.pop("log_w").double().cpu()
            for key, value in terms.items():
                moments.add(key, rows_, value)
            bar.update(b * kk)
    bar.close()
    inner = log_mean_exp(log_w, dim=2)  # (N, S) IWAE-K of each point given each θ_s
    log_w = log_w if held else log_w[:, 0]
    k = k * S  # the draws every average below is over
    zeros = torch.zeros(n, dtype=torch.float64)
    names = [key[1] for key in moments.sums if isinstance(key, tuple) and key[0] == "distortion"]
    with_error = [name for name in names if ("sse", name) in moments.sums]
    sse = sum((moments.get(("sse", s), zeros) for s in with_error), zeros)
    count = sum((moments.get(("count", s), zeros) for s in with_error), zeros)
    z_sum = moments.get("z", torch.zeros(n, 0, dtype=torch.float64))
    between = (moments.get("z2", z_sum) / k - (z_sum / k) ** 2).clamp(min=0) * (k / max(k - 1, 1))
    return PointEstimates(
        log_w=log_w,
        log_px=log_mean_exp(inner, dim=1),
        elbo=(moments.sums["log_lik"] + moments.sums["log_ratio"]) / k,
        kl=-moments.sums["log_ratio"] / k,
        distortion=-moments.sums["log_lik"] / k,
        mse=sse / count.clamp(min=1) if with_error else torch.full((n,), float("nan"), dtype=torch.float64),
        latent_mean=z_sum / k,
        latent_var=moments.get("within", z_sum) / k + between,
        distortion_by_site={s: moments.sums[("distortion", s)] / k for s in names},
        mse_by_site={s: moments.sums[("sse", s)] / moments.sums[("count", s)].clamp(min=1) for s in with_error},
    )


CONSTANT_SPREAD = 1e-8  # nats: log-weights this flat are equal up to rounding


def psis_khat(log_w: torch.Tensor) -> np.ndarray:
    """PSIS Pareto shape k̂ for each row of ``log_w`` ``(N, K)``, with ArviZ (``(N, S, K)``: the largest over s).

    Rows whose weights are all equal (the guide *is* the posterior) have no tail to fit;
    ArviZ returns inf for them, which would read as "unreliable", so they get k̂ = 0.
    """
    import arviz as az

    if log_w.dim() == 3:  # the inner weights of each draw θ_s: a point reports its largest k̂
        n, S, K = log_w.shape
        return psis_khat(log_w.reshape(n * S, K)).reshape(n, S).max(axis=1)
    lw = log_w.numpy().astype(np.float64)
    with warnings.catch_warnings():
        # ArviZ warns when some k̂ are large (the caller reports k̂ itself) and divides by
        # zero on constant rows (handled below)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        _, khat = az.psislw(lw)
    khat = np.asarray(khat, dtype=np.float64)
    khat[np.ptp(lw, axis=1) < CONSTANT_SPREAD] = 0.0
    return khat


def active_units(latent_mean: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> tuple[int, np.ndarray]:
    """Burda et al.'s active units: the variance over points of E_q[z_u] above ``threshold``."""
    if len(latent_mean) < 2 or not latent_mean.shape[1]:
        return 0, np.zeros(latent_mean.shape[1])
    variance = latent_mean.var(dim=0, unbiased=True).numpy()
    return int((variance > threshold).sum()), variance


def summarize(est: PointEstimates, khat: np.ndarray) -> Summary:
    """The headline numbers, nats per datapoint (higher is better for log_px and elbo)."""
    log_px, log_px_se = mean_se(est.log_px)
    elbo, elbo_se = mean_se(est.elbo)
    n_active, variance = active_units(est.latent_mean)
    mc_se = est.log_px_mc_se.numpy()
    finite = bool(np.isfinite(mc_se).all())
    summary = Summary(
        log_px=log_px,
        log_px_se=log_px_se,
        log_px_mc_se=float(mc_se.mean()) if finite else None,  # mean over points of each estimate's MC SE
        log_px_mc_se_rms=float(np.sqrt(np.mean(mc_se**2))) if finite else None,
        elbo=elbo,
        elbo_se=elbo_se,
        kl=float(est.kl.mean()),
        distortion=float(est.distortion.mean()),
        mse=float(est.mse.mean()) if est.mse_by_site else None,
        active_units=n_active,
        latent_variance=[float(v) for v in variance],
        posterior_variance=[float(v) for v in est.latent_var.mean(0)],
        distortion_by_site={name: float(v.mean()) for name, v in est.distortion_by_site.items()},
        mse_by_site={name: float(v.mean()) for name, v in est.mse_by_site.items()},
        khat_mean=float(np.mean(khat)),
        khat_max=float(np.max(khat)),
        khat_frac_gt_0_7=float(np.mean(khat > 0.7)),
        khat_frac_0_5_to_0_7=float(np.mean((khat > 0.5) & (khat <= 0.7))),
        k=est.k,
        n_points=int(est.log_w.shape[0]),
    )
    if not est.global_draws:
        return summary
    inner = est.log_px_mc_se_inner.numpy()  # the posterior predictive under q(θ): say so, and split its MC error
    return replace(
        summary,
        global_draws=est.global_draws,
        log_px_estimand="posterior predictive log E_q(theta)[p(x|theta)], theta: the global latents",
        log_px_mc_se_inner=float(inner.mean()) if finite else None,
        log_px_mc_se_outer=float(np.sqrt(np.clip(mc_se**2 - inner**2, 0.0, None)).mean()) if finite else None,
    )
