"""The Bayesian-workflow analysis of a trained run: ``ppl-vae evaluate``.

Everything goes through the program's traces, so a user's own program gets the same
analysis: importance-sampled log p(x) with PSIS k̂, rate/distortion/MSE (also per observed
site), active units, the amortization and approximation gaps, simulation-based calibration,
predictive checks, an ArviZ ``InferenceData``, and — for a guide with a latent site ``y`` on
labelled test data — the classification accuracy. :func:`evaluate` computes an
:class:`Evaluation`; :func:`write_evaluation` writes it into the run directory's
``evaluation/`` as one unit; :func:`evaluate_run` does both.

The test points get the inputs the program was trained to take (:meth:`Run.inputs`): a
program conditioned on labels (``--labels all``) gets the test labels, and log p(x) is then
log p(x | y) or log p(x, y); a program that takes y otherwise gets ``y=None`` and y is summed
out. Enumerated discrete sites are summed out exactly everywhere.

A program with global latents θ (sites outside the data plate: a Bayesian decoder's weights)
is scored by its posterior predictive log E_q(θ)[p(x|θ)] over ``--global-draws`` draws shared by
the test points (:mod:`ppl_vae.diagnostics.estimators`). The gaps and the calibration are those
of the local guide q(z | x, θ), with θ held at one draw of q(θ) in model and guide.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..config import EvalConfig
from ..contracts import rows_of
from ..data.datasets import is_class_labels
from ..data.rowfile import as_tensor
from ..diagnostics.elpd import heldout_elpd, point_hashes
from ..diagnostics.estimators import PointEstimates, importance_sample, psis_khat, summarize
from ..diagnostics.gaps import refine_local_guide
from ..diagnostics.inference_data import data_variable, to_inference_data
from ..diagnostics.sbc import SBCResult, SBCSkipped, simulation_based_calibration
from ..diagnostics.summary import Summary
from ..diagnostics.verdicts import verdicts
from ..errors import UserError
from ..inference.importance import draw_globals, global_names, max_plate_nesting
from ..inference.predictive import classify, prior_predictive
from ..plots import diagnostics as diagnostic_plots
from ..plots.figures import plot_images, plot_reconstructions
from ..storage.atomic import atomic_path, check_writable, open_regular, sha256_bytes
from ..storage.directories import check_contained, locked, remove_leftovers, staging_dir, swap_in
from ..storage.schema import write_table
from .budget import check_memory, evaluation_bytes
from .layout import EVALUATION, RUN_SUBDIRS
from .report import write_report
from .schema import versions
from .sources import user_code_errors
from .timing import timed

log = logging.getLogger(__name__)

__all__ = [
    "Evaluation",
    "evaluate",
    "write_evaluation",
    "evaluate_run",
    "inference_gaps",
    "read_pointwise",
    "read_heldout_elpd",
]

POINTWISE = ("log_px", "elbo", "kl", "khat", "point_hash", "k")  # the arrays of pointwise.npz


@dataclass
class Evaluation:
    """What :func:`evaluate` computes: the summary, per-point estimates and what the figures show."""

    summary: Summary  # the numbers of evaluation.json
    estimates: PointEstimates  # per test point: IWAE log p(x), ELBO, KL, ... (K log-weights each)
    khat: np.ndarray  # (N,) PSIS k̂ per test point
    sbc: SBCResult | None  # None: skipped (--sbc-simulations 0, or nothing to simulate)
    idata: Any  # arviz.InferenceData of the first idata_points points
    x: torch.Tensor  # (N, D) the evaluated points
    prior_x: torch.Tensor | None  # (16, D) prior predictive draws


def inference_gaps(
    model, guide, x: torch.Tensor, amortized, k: int, steps: int, progress: bool = False, **inputs
) -> dict:
    """Cremer et al.'s split of log p(x) - ELBO on the rows of ``x`` (see :mod:`ppl_vae.diagnostics.gaps`).

    ``amortized`` are the amortized guide's estimates for the same rows. log p(x) is the
    tighter of the two IWAE-K lower bounds (amortized and refined proposal), point by point.
    ``gap_sites`` says what the refined guide did with each latent site.
    """
    local = refine_local_guide(model, guide, x, steps=steps, progress=progress, **inputs)
    if local is None:
        return _gaps_skipped(
            "no latent sites, or a discrete latent site neither enumerated nor Categorical/OneHotCategorical/Bernoulli"
        )
    refined = importance_sample(model, local.guide, x, k, split_points=False, **inputs)
    log_px = torch.maximum(amortized.log_px, refined.log_px)
    return {
        "approximation_gap": float((log_px - refined.elbo).mean()),
        "amortization_gap": float((refined.elbo - amortized.elbo).mean()),
        "gap_points": int(len(x)),
        "gap_sites": dict(local.notes),
    }


def _gaps_skipped(reason: str) -> dict:
    return {"approximation_gap": None, "amortization_gap": None, "gap_points": 0, "gaps_skipped": reason}


def _gaps(est, model, guide, x: torch.Tensor, config: EvalConfig, progress: bool, inputs: dict) -> dict:
    """The approximation and amortization gaps on ``x`` (the first points), or why there are none."""
    if not len(x):
        return _gaps_skipped("--gap-points 0")
    amortized = _first(est, len(x))
    if est.global_draws:  # the amortized numbers at the same θ as the refined guide's
        amortized = importance_sample(model, guide, x, config.k, **inputs)
    return inference_gaps(model, guide, x, amortized, config.k, config.gap_steps, progress, **inputs)


def evaluate(
    run,
    config: EvalConfig | None = None,
    x: torch.Tensor | None = None,
    progress: bool = True,
    labels: np.ndarray | None = None,
) -> Evaluation:
    """Run the whole analysis on the run's test split (or on ``x``, with its ``labels``); nothing is written."""
    config = (config or EvalConfig()).validate()
    if x is None:
        x, labels = run.dataset().test, run.dataset().test_labels
    x = as_tensor(x).to(run.device)
    if config.points:
        x = x[: config.points]
        labels = None if labels is None else labels[: config.points]
    inputs = run.inputs(labels)
    model, guide = run.program.model, run.program.guide
    pyro.set_rng_seed(config.seed)
    start = time.perf_counter()

    sampler = []  # the one line saying which sampler ran, and why

    def say(line: str) -> None:
        sampler.append(line)
        log.info(line)

    with timed(f"importance sampling (K = {config.k}, {len(x)} points)"):
        est = importance_sample(
            model,
            guide,
            x,
            config.k,
            progress=progress,
            compile=config.compile_sampler,
            say=say,
            global_draws=config.global_draws,
            **inputs,
        )
    khat = psis_khat(est.log_w)
    found = {  # what the estimates do not say: added to the summary as the analysis goes on
        "sampler": sampler[-1] if sampler else "eager importance sampler",  # the last word: a fallback
        "inputs": sorted(k for k, v in inputs.items() if v is not None),
    }
    if labels is not None and is_class_labels(np.asarray(labels)):
        predicted = classify(guide, x, "y", **inputs)
        if predicted is not None:
            found["accuracy"] = float((predicted.cpu().numpy() == np.asarray(labels)).mean())

    # the local guide's gaps and calibration: global latents held at one draw θ ~ q(θ) in both programs
    local_model, local_guide = model, guide
    if est.global_draws:
        first = rows_of(inputs, slice(2))
        with torch.no_grad():
            theta = draw_globals(guide, x[:2], 1, max_plate_nesting(model, guide, x[:2], **first), **first)
        local_model, local_guide = theta.hold(model, 0), theta.hold(guide, 0)
        found["global_sites"] = global_names(model, guide, x[:2], **first)
        found["local_diagnostics"] = "gaps and calibration of q(z | x, theta) at one draw theta ~ q(theta)"
    n_gap = min(config.gap_points, len(x))
    with timed(f"inference gaps ({n_gap} points, {config.gap_steps} steps)"):
        found.update(_gaps(est, local_model, local_guide, x[:n_gap], config, progress, rows_of(inputs, slice(n_gap))))

    sbc = None
    with timed(f"calibration ({config.sbc_simulations} simulations)"):
        if config.sbc_simulations:
            settings = dict(device=run.device, like=x, seed=config.seed)
            sbc = simulation_based_calibration(
                local_model, local_guide, run.data_dim, config.sbc_simulations, config.sbc_draws, **settings, **inputs
            )
    skipped = "--sbc-simulations 0" if sbc is None else sbc.reason if isinstance(sbc, SBCSkipped) else None
    sbc = None if skipped else sbc
    summary = replace(
        summarize(est, khat),
        **found,
        sbc_pvalue=None if sbc is None else sbc.pvalue,
        sbc_pvalues=[] if sbc is None else [float(p) for p in sbc.pvalues],
        sbc_skipped=skipped,
        seconds=time.perf_counter() - start,
    )
    summary = replace(summary, verdicts=verdicts(summary))  # {diagnostic: what it says, what to try next}

    with timed("the ArviZ export and the prior predictive"):
        n_idata = min(config.idata_points, len(x))
        idata = to_inference_data(
            model, guide, x[:n_idata], draws=config.idata_draws, **rows_of(inputs, slice(n_idata))
        )
        _, prior_x = prior_predictive(model, 16, run.data_dim, run.device, like=x, **inputs)
    return Evaluation(summary, est, khat, sbc, idata, x, prior_x)


def write_evaluation(
    run_dir: str | Path, ev: Evaluation, image_shape: tuple[int, ...], settings: dict | None = None
) -> Path:
    """Write the evaluation into ``run_dir/evaluation/`` as one unit, then refresh the report.

    Everything — ``evaluation.json``, ``settings.json`` (``settings``: the options, the data set
    and the checkpoint evaluated, plus the sha256 of the evaluated points), ``pointwise.npz``,
    ``inference_data.nc`` and the figures — is written into a staging directory that replaces
    the previous evaluation in one rename, under the run's lock. A crash leaves the old
    evaluation or the new one, never a mix; its leftovers are removed by the next writer.
    """
    run_dir = Path(run_dir)
    target = run_dir / EVALUATION
    with locked(run_dir, "run directory"):  # the run's own lock: fit --resume and evaluate exclude each other
        remove_leftovers(run_dir, RUN_SUBDIRS)  # what killed writers of this run left
        remove_leftovers(target, ("figures",))
        staging = staging_dir(target)
        try:
            _write_into(staging, ev, image_shape, settings or {})
            swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        write_report(run_dir)
    return target


def _draw(figures: Path, ev: Evaluation, image_shape: tuple[int, ...]) -> dict[str, str] | None:
    """The evaluation's figures; where one cannot be drawn, ``{figure: why}`` (the summary's ``figures_absent``)."""
    diagnostic_plots.khat_per_point(ev.khat, figures / "khat.png")
    worst = np.argsort(-ev.khat)[:8]
    plot_images(
        ev.x[torch.as_tensor(worst.copy())].cpu(),
        image_shape,
        figures / "khat_worst.png",
        title="largest k̂: " + ", ".join(f"{ev.khat[i]:.2f}" for i in worst),
    )
    absent = {}  # figure -> why it is not drawn: the report says so
    no_x = "no observed site of the model holds x, so its draws are not images of the data"
    if ev.prior_x is not None:
        plot_images(ev.prior_x.cpu(), image_shape, figures / "prior_predictive.png", title="x ~ p(x|z), z ~ p(z)")
    else:
        absent["prior_predictive.png"] = no_x
    if data_variable(ev.idata) is None:
        absent["posterior_predictive.png"] = absent["ppc.png"] = no_x
    else:
        name = data_variable(ev.idata)
        x_rep = ev.idata.posterior_predictive[name].values[0, :4, :8]  # (4 draws, 8 points, D)
        plot_reconstructions(
            ev.x[:8].cpu(),
            torch.from_numpy(x_rep),
            image_shape,
            figures / "posterior_predictive.png",
            title="x' ~ p(x|z), z ~ q(z|x)",
        )
        diagnostic_plots.ppc_image_statistics(ev.idata, figures / "ppc.png")
    if ev.sbc is not None:
        diagnostic_plots.sbc_rank_ecdf(ev.sbc, figures / "sbc.png")
    else:
        absent["sbc.png"] = f"calibration was skipped: {ev.summary.sbc_skipped}"
    return absent or None


def _write_into(out: Path, ev: Evaluation, image_shape: tuple[int, ...], settings: dict) -> None:
    with timed("the ArviZ file"), atomic_path(out / "inference_data.nc") as tmp:
        ev.idata.to_netcdf(str(tmp), engine="h5netcdf")
    with timed("the evaluation's figures"):
        ev.summary = replace(ev.summary, figures_absent=_draw(out / "figures", ev, image_shape))

    est = ev.estimates
    with atomic_path(out / "pointwise.npz") as tmp:
        with open(tmp, "wb") as f:  # per-point numbers for paired comparisons; plain arrays, no pickle
            np.savez(
                f,
                log_px=est.log_px.numpy(),
                log_px_mc_se=est.log_px_mc_se.numpy(),  # Monte Carlo SE of each log_px (delta method)
                elbo=est.elbo.numpy(),
                kl=est.kl.numpy(),
                khat=ev.khat,
                point_hash=point_hashes(ev.x),  # which points, in which order: comparisons check it
                k=np.int64(est.k),
            )
    points = ev.x.detach().cpu().contiguous()
    write_table(
        out / "settings.json",
        {**settings, "points": {"n": int(len(points)), "sha256": sha256_bytes(points.numpy().tobytes())}},
    )
    write_table(out / "evaluation.json", replace(ev.summary, versions=versions()).to_json())


def evaluate_run(
    run,
    config: EvalConfig | None = None,
    x: torch.Tensor | None = None,
    progress: bool = True,
    labels: np.ndarray | None = None,
    data_name: str | None = None,
) -> Summary:
    """:func:`evaluate` the run, :func:`write_evaluation` it into its directory, and return the summary.

    ``labels`` are the labels of ``x`` (for a program that takes y); ``data_name`` names the data
    set ``x`` comes from (default: the run's own test split); it is recorded in
    ``evaluation/settings.json`` with the options and the checkpoint evaluated.
    """
    config = (config or EvalConfig()).validate()
    n_points = len(run.dataset().test if x is None else x)
    check_memory(
        "this evaluation",
        evaluation_bytes(config, run.config, n_points, run.data_dim),
        run.device,
        "lower --k, --points, --global-draws, --sbc-simulations, --sbc-draws, --idata-points or --idata-draws",
    )
    check_writable(run.path)  # before the work, not after it
    check_contained(run.path, RUN_SUBDIRS, whole=(EVALUATION,))
    with user_code_errors(run.sources):
        ev = evaluate(run, config, x, progress, labels)
    settings = {
        "evaluate": asdict(config),
        "data": {"name": data_name or run.config.data.name, "split": "test" if data_name is None else "given"},
        "checkpoint": dict(run.checkpoint),
    }
    write_evaluation(run.path, ev, run.image_shape, settings)
    return ev.summary


def read_pointwise(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The per-point arrays :func:`write_evaluation` wrote into ``pointwise.npz`` (no pickle)."""
    path = Path(run_dir) / EVALUATION / "pointwise.npz"
    if not path.is_file():
        raise UserError(f"{run_dir} has no pointwise.npz; run `ppl-vae evaluate {run_dir}` first")
    with open_regular(path, "evaluation file") as f, np.load(f, allow_pickle=False) as arrays:
        missing = [name for name in POINTWISE if name not in arrays]
        if missing:
            raise UserError(
                f"{path} predates {', '.join(missing)}; run `ppl-vae evaluate {run_dir}` again to compare it"
            )
        return {name: arrays[name] for name in arrays.files}


def read_heldout_elpd(run_dir: str | Path):
    """The run's held-out elpd as ``arviz.ELPDData`` (:func:`ppl_vae.diagnostics.elpd.heldout_elpd`)."""
    p = read_pointwise(run_dir)
    return heldout_elpd(p["log_px"], k=int(p["k"]), khat=p["khat"], point_hash=p["point_hash"])


def _first(est: PointEstimates, n: int) -> PointEstimates:
    def head(value):
        return {k: v[:n] for k, v in value.items()} if isinstance(value, dict) else value[:n]

    return replace(est, **{f.name: head(getattr(est, f.name)) for f in fields(est)})
