r"""Held-out numbers from importance sampling: log p(x), ELBO, rate, distortion, MSE, active units, PSIS k̂.

For each test point :math:`x_i` and K draws :math:`z_{ik} \sim q(z|x_i)` the shared
log-weights give

.. math::

    \widehat{\log p}(x_i) = \log \frac1K \sum_k w_{ik}, \quad
    \mathrm{ELBO}_i = \frac1K \sum_k \log w_{ik}, \quad
    \mathrm{KL}_i = -\frac1K \sum_k \log\frac{p(z_{ik})}{q(z_{ik}|x_i)}, \quad
    D_i = -\frac1K \sum_k \log p(x_i|z_{ik}),

computed in chunks over points and particles, so memory is bounded whatever K and N are.
PSIS (Vehtari et al. 2024, arXiv:1507.02646) fits a generalized Pareto to the largest weights of
each point: its shape k̂ says whether the IWAE estimate can be trusted (Yao et al. 2018,
arXiv:1802.02538: < 0.5 good, 0.5–0.7 usable, > 0.7 unreliable). Active units follow Burda
et al. 2016: :math:`\operatorname{Cov}_x(\mathbb E_q[z_u]) > 0.01`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from ..inference.importance import latent_sites, log_mean_exp, log_weights, max_plate_nesting
from ..inference.predictive import observed_site
from .statistics import mean_se

__all__ = ["PointEstimates", "importance_sample", "psis_khat", "active_units", "summarize", "ACTIVE_THRESHOLD"]

ACTIVE_THRESHOLD = 0.01
ROWS_PER_CHUNK = 1 << 13  # particles x points decoded at once: bounds memory, stays cache-friendly


@dataclass
class PointEstimates:
    """Per-point results of importance sampling with K particles."""

    log_w: torch.Tensor  # (N, K) log-weights, float64
    log_px: torch.Tensor  # (N,) IWAE-K
    elbo: torch.Tensor  # (N,)
    kl: torch.Tensor  # (N,) Monte Carlo rate
    distortion: torch.Tensor  # (N,) -E_q log p(x|z)
    mse: torch.Tensor  # (N,) E_q mean_d (x_d - E[x_d|z])^2
    latent_mean: torch.Tensor  # (N, total latent dims) E_q[z], all latent sites concatenated
    latent_var: torch.Tensor  # (N, total latent dims) Var_q[z]

    @property
    def k(self) -> int:
        return self.log_w.shape[1]


def _chunk_sizes(n: int, k: int, rows: int) -> tuple[int, int]:
    k_chunk = max(1, min(k, rows))
    n_chunk = max(1, min(n, rows // k_chunk))
    return n_chunk, k_chunk


@torch.inference_mode()
def importance_sample(
    model,
    guide,
    x: torch.Tensor,
    k: int = 1000,
    rows: int = ROWS_PER_CHUNK,
    progress: bool = False,
    split_points: bool = True,
) -> PointEstimates:
    """Run K importance draws for every row of ``x``, in chunks of about ``rows`` particle-rows.

    ``split_points=False`` keeps all points in every chunk (for per-datapoint guides whose
    parameters are tied to the rows of ``x``) and chunks over particles only.
    """
    n = x.shape[0]
    n_chunk, k_chunk = _chunk_sizes(n, k, rows) if split_points else (n, max(1, min(k, rows // n)))
    nesting = max_plate_nesting(model, guide, x[:n_chunk])
    log_w = torch.empty(n, k, dtype=torch.float64)
    log_lik_sum = torch.zeros(n, dtype=torch.float64)
    log_ratio_sum = torch.zeros(n, dtype=torch.float64)
    sse_sum = torch.zeros(n, dtype=torch.float64)
    z_sum: torch.Tensor | None = None
    z2_sum: torch.Tensor | None = None
    bar = tqdm(
        total=n * k,
        desc=f"importance sampling (K={k})",
        unit="draw",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    for start in range(0, n, n_chunk):
        xb = x[start : start + n_chunk]
        b = xb.shape[0]
        for k0 in range(0, k, k_chunk):
            kk = min(k_chunk, k - k0)
            # shapes and supports are checked on the first chunk; the rest repeat its shapes
            with pyro.validation_enabled(is_validation_enabled() and start == 0 and k0 == 0):
                lw, guide_trace, model_trace = log_weights(model, guide, xb, kk, nesting, return_traces=True)
            rows_ = slice(start, start + b)
            log_w[rows_, k0 : k0 + kk] = lw.total.T.double().cpu()
            log_lik_sum[rows_] += lw.log_lik.sum(0).double().cpu()
            log_ratio_sum[rows_] += lw.log_ratio.sum(0).double().cpu()
            mean = observed_site(model_trace)["fn"].mean  # (kk, b, D) decodings E[x|z]
            sse_sum[rows_] += (mean - xb).square_().mean(-1).expand(kk, b).sum(0).double().cpu()
            z = torch.cat([s["value"].reshape(kk, b, -1) for s in latent_sites(guide_trace)], dim=-1)  # (kk, b, Z)
            if z_sum is None:
                z_sum = torch.zeros(n, z.shape[-1], dtype=torch.float64)
                z2_sum = torch.zeros(n, z.shape[-1], dtype=torch.float64)
            z_sum[rows_] += z.sum(0).double().cpu()
            z2_sum[rows_] += z.square().sum(0).double().cpu()
            bar.update(b * kk)
    bar.close()
    return PointEstimates(
        log_w=log_w,
        log_px=log_mean_exp(log_w, dim=1),
        elbo=log_w.mean(1),
        kl=-log_ratio_sum / k,
        distortion=-log_lik_sum / k,
        mse=sse_sum / k,
        latent_mean=z_sum / k,
        latent_var=(z2_sum / k - (z_sum / k) ** 2).clamp(min=0) * (k / max(k - 1, 1)),
    )


CONSTANT_SPREAD = 1e-8  # nats: log-weights this flat are equal up to rounding


def psis_khat(log_w: torch.Tensor) -> np.ndarray:
    """PSIS Pareto shape k̂ for each row of ``log_w`` ``(N, K)``, with ArviZ.

    Rows whose weights are all equal (the guide *is* the posterior) have no tail to fit;
    ArviZ returns inf for them, which would read as "unreliable", so they get k̂ = 0.
    """
    import arviz as az

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
    variance = latent_mean.var(dim=0, unbiased=True).numpy() if len(latent_mean) > 1 else np.zeros(latent_mean.shape[1])
    return int((variance > threshold).sum()), variance


def summarize(est: PointEstimates, khat: np.ndarray) -> dict:
    """The headline numbers, nats per datapoint (higher is better for log_px and elbo)."""
    log_px, log_px_se = mean_se(est.log_px)
    elbo, elbo_se = mean_se(est.elbo)
    n_active, variance = active_units(est.latent_mean)
    return {
        "log_px": log_px,
        "log_px_se": log_px_se,
        "elbo": elbo,
        "elbo_se": elbo_se,
        "kl": float(est.kl.mean()),
        "distortion": float(est.distortion.mean()),
        "mse": float(est.mse.mean()),
        "active_units": n_active,
        "latent_variance": [float(v) for v in variance],
        "posterior_variance": [float(v) for v in est.latent_var.mean(0)],
        "khat_mean": float(np.mean(khat)),
        "khat_max": float(np.max(khat)),
        "khat_frac_gt_0_7": float(np.mean(khat > 0.7)),
        "khat_frac_0_5_to_0_7": float(np.mean((khat > 0.5) & (khat <= 0.7))),
        "k": est.k,
        "n_points": int(est.log_w.shape[0]),
    }
