r"""Why MSE? The fixed-σ model trained at several σ: rate, distortion, active units, identity.

:math:`-\log \mathcal N(x; f(z), \sigma^2 I) = \mathrm{SSE}/(2\sigma^2) + (D/2)\log 2\pi\sigma^2`, so
σ is the exchange rate between squared error and KL (β = 2σ² for an "SSE + β·KL" loss). The
sweep measures what that rate does: large σ buys a small KL with blurry, identity-losing
decodings; small σ keeps more latent directions active (probabilistic PCA predicts which:
eigenvalues of the data covariance above σ², Lucas et al. 2019, arXiv:1911.02469).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyro
import torch

from ..config import Config, EvalConfig, ModelConfig
from ..data.datasets import Dataset, load_data
from ..data.rowfile import as_tensor
from ..diagnostics.identity import identity_preservation, train_classifier
from ..errors import UserError
from ..inference.predictive import prior_predictive, reconstruct
from ..plots import sweep as sweep_plots
from ..plots.figures import image_grid, save_figure
from ..runs.report import markdown_table
from ..storage.atomic import write_csv, write_text
from ..storage.schema import write_table
from .executors import Executor
from .runner import VariantCallback, open_study, run_variants

__all__ = ["sigma_sweep", "parse_sigmas", "sigma_label", "ppca_active_units"]


def parse_sigmas(text: str) -> list[float]:
    """Distinct σ values, sorted; each names its run by its exact value (0.1 and 0.1000001 are two)."""
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sigmas must be comma-separated numbers, got {text!r}") from None
    if not sigmas or any(not (np.isfinite(s) and s > 0) for s in sigmas):
        raise UserError(f"--sigmas must be positive numbers, got {text!r}")
    for sigma in sigmas:
        Config(model=ModelConfig(sigma=sigma)).validate()  # the range of model.sigma, before any work
    return sorted(set(sigmas))


def sigma_label(sigma: float) -> str:
    """σ as the shortest text that reads back as exactly the same number (``repr``: 0.1, 0.1000001, 1e-06)."""
    return repr(float(sigma))


def ppca_active_units(x: torch.Tensor, sigma: float, max_units: int) -> int:
    """Directions probabilistic PCA keeps: data-covariance eigenvalues above σ² (at most L)."""
    eigenvalues = np.linalg.eigvalsh(np.cov(x.double().numpy().T))
    return int(min((eigenvalues > sigma**2).sum(), max_units))


def _prior_variance(model, data_dim: int, n: int = 4000) -> torch.Tensor:
    latents, _ = prior_predictive(model, n, data_dim)
    return torch.cat([v.reshape(n, -1) for v in latents.values()], dim=-1).double().var(0)


def sigma_sweep(
    sigmas: list[float],
    base: Config,
    out: str | Path,
    workflow: EvalConfig,
    data: Dataset | None = None,
    progress: bool = True,
    overwrite: bool = False,
    executor: Executor | None = None,
    callbacks: Sequence[VariantCallback] = (),
) -> list[dict]:
    """Train the canonical model at every σ (all else equal), evaluate, and write the sweep.

    ``out`` must be new, empty or a sigma-sweep study (see :mod:`ppl_vae.studies.runner`); a run
    whose config changed is trained again only with ``overwrite``. ``callbacks`` are called as
    ``f(run, epoch, row)`` after every epoch, ``run`` being ``sigma_<σ>`` (see :func:`~ppl_vae.compare`).
    """
    if base.model.likelihood != "normal" or base.model.program:
        raise UserError("the sigma sweep trains the fixed-σ Normal model (--likelihood normal, no --model program)")
    workflow = workflow.validate()
    with open_study(out, "sigma-sweep") as out:
        return _sweep(sigmas, base, out, workflow, data, progress, overwrite, executor, callbacks)


def _sweep(
    sigmas, base: Config, out: Path, workflow: EvalConfig, data, progress: bool, overwrite: bool, executor, callbacks
):
    data = data or load_data(base.data)
    names = {sigma: f"sigma_{sigma_label(sigma)}" for sigma in sigmas}
    variants = {}
    for sigma, name in names.items():
        variants[name] = copy.deepcopy(base)
        variants[name].model.sigma = sigma
    results = run_variants(
        variants, out, workflow, data, progress, overwrite, kind="sigma-sweep", executor=executor, callbacks=callbacks
    )

    labels = data.test_labels[: workflow.points or None] if data.test_labels is not None else None
    classifier = (
        train_classifier(as_tensor(data.train), data.train_labels, base.train.seed) if labels is not None else None
    )
    x = as_tensor(data.test)[: workflow.points or None]
    rows, decodings = [], []
    examples = x[_example_rows(labels, 4)]
    for sigma, name in names.items():
        run, ev = results[name]
        model, guide = run.program.model, run.program.guide
        pyro.set_rng_seed(workflow.seed)
        prior_var = _prior_variance(model, data.data_dim)
        row = {
            "sigma": sigma,
            "beta_equivalent": 2 * sigma**2,
            "elbo": ev.elbo,
            "log_px": ev.log_px,
            "log_px_se": ev.log_px_se,
            "rate": ev.kl,
            "distortion": ev.distortion,
            "mse": ev.mse,
            "active_units": ev.active_units,
            "ppca_active_units": ppca_active_units(as_tensor(data.train), sigma, base.model.latent_dim),
            "posterior_spread": float(np.mean(np.array(ev.posterior_variance) / prior_var.numpy())),
            "khat_mean": ev.khat_mean,
        }
        if classifier is not None:
            ident = identity_preservation(model, guide, x, labels, classifier)
            for key, rate in ident.items():
                row[f"identity_{key}"] = rate["mean"]
                row[f"identity_{key}_low"] = rate["low"]
                row[f"identity_{key}_high"] = rate["high"]
        rows.append(row)
        decodings.append(reconstruct(model, guide, examples, 6))  # (6, 4, D)

    write_csv(out / "sweep.csv", rows)
    write_table(out / "sweep.json", {"data": data.name, "rows": rows})
    write_text(out / "sweep.md", sweep_table(rows))
    figures = out / "figures"
    sweep_plots.rate_mse_curve(rows, figures / "rate_distortion.png")
    if classifier is not None:
        sweep_plots.identity_against_sigma(rows, figures / "identity.png")
    _decodings_figure(examples, decodings, sigmas, data.image_shape, figures / "decodings.png")
    return rows


def _example_rows(labels: np.ndarray | None, n: int) -> list[int]:
    """The first test point of each of the first ``n`` distinct labels (or the first ``n`` points)."""
    if labels is None:
        return list(range(n))
    _, first = np.unique(labels, return_index=True)
    return sorted(first)[:n]


def _decodings_figure(examples, decodings, sigmas, image_shape, path):
    """Per σ, a row of decodings of 6 draws z ~ q(z|x) for each of the example images."""
    k, n, d = decodings[0].shape
    blank = torch.zeros(k - 1, d)
    top = torch.cat([torch.cat([examples[i : i + 1], blank]) for i in range(n)])
    rows = [top] + [torch.cat([dec[:, i] for i in range(n)]) for dec in decodings]
    labels = ["x"] + [f"σ={sigma_label(s)}" for s in sigmas]
    save_figure(image_grid(rows, image_shape, labels, title="decodings of z ~ q(z|x): each block one test image"), path)


def sweep_table(rows: list[dict]) -> str:
    """The sweep as a Markdown table."""
    has_identity = "identity_posterior_sample" in rows[0]
    head = ["σ", "β=2σ²", "ELBO", "log p(x) ± SE", "rate (KL)", "distortion", "MSE", "active (pPCA)", "spread q/p", "k̂"]
    if has_identity:
        head += ["identity z~q [95% CI]", "z=E_q[z]", "z~p(z)"]
    table = []
    for r in rows:
        cells = [
            sigma_label(r["sigma"]),
            f"{r['beta_equivalent']:.3g}",
            f"{r['elbo']:.1f}",
            f"{r['log_px']:.1f} ± {r['log_px_se']:.1f}",
            f"{r['rate']:.1f}",
            f"{r['distortion']:.1f}",
            f"{r['mse']:.4f}",
            f"{r['active_units']} ({r['ppca_active_units']})",
            f"{r['posterior_spread']:.3f}",
            f"{r['khat_mean']:.2f}",
        ]
        if has_identity:
            cells += [
                f"{r['identity_posterior_sample']:.3f} "
                f"[{r['identity_posterior_sample_low']:.3f}, {r['identity_posterior_sample_high']:.3f}]",
                f"{r['identity_posterior_mean']:.3f}",
                f"{r['identity_prior_sample']:.3f}",
            ]
        table.append(cells)
    return markdown_table(head, table)
