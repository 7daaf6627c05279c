r"""Comparing variants on equal terms: same split, seeds, budget, test points and K.

Variants are ranked by held-out :math:`\widehat{\log p}(x)` (IWAE-K on the test split). The
uncertainty of a difference is *paired* over the same test points, as ``arviz.compare`` does
for elpd: with :math:`d_i = \widehat{\log p}_{\text{best}}(x_i) - \widehat{\log p}_v(x_i)`,

.. math::

    \Delta_v = \bar d, \qquad \mathrm{SE}(\Delta_v) = \mathrm{sd}(d) / \sqrt N,

which is far smaller than the unpaired SEs when variants agree on which points are hard.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config, EvalConfig, StudyConfig, load_config, resolve_key, set_value
from ..data.datasets import Dataset, load_data
from ..diagnostics.statistics import mean_se, paired_difference
from ..errors import UserError
from ..plots import comparison as compare_plots
from ..runs.layout import EVALUATION
from ..runs.report import markdown_table
from ..storage.atomic import write_csv, write_json, write_text
from .runner import open_study, run_variants

__all__ = ["Comparison", "compare", "parse_grid", "variants_from"]


def parse_grid(text: str) -> list[dict[str, str]]:
    """``'guide=diagonal,iaf;prior=standard,vamp'`` -> the 4 combinations as dicts."""
    axes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise UserError(f"--grid must look like 'guide=diagonal,iaf;prior=standard,vamp', got {text!r}")
        if len(set(options)) < len(options):  # each cell is named by its exact values: a repeat is one run
            raise UserError(f"--grid lists a value of {key.strip()!r} twice: {values.strip()!r}")
        resolve_key(key.strip())  # an unknown key fails here, before any variant is trained
        axes.append((key.strip(), options))
    combos = [{}]
    for key, options in axes:
        combos = [{**c, key: v} for c in combos for v in options]
    return combos


def variants_from(base: Config, files: list[str] = (), grid: str = "", overrides=None) -> dict[str, Config]:
    """Named variant configs: one a TOML file (its name the file's stem), or one a grid cell."""
    variants: dict[str, Config] = {}
    for path in files:
        config = load_config(path, base)
        name = Path(path).stem
        if name in variants:
            raise UserError(f"two variant files are named {name!r}")
        variants[name] = config
    starts = list(variants.items()) or [("", base)]
    if grid:
        cells = parse_grid(grid)
        variants = {}
        for prefix, start in starts:
            for cell in cells:
                config = copy.deepcopy(start)
                for key, value in cell.items():
                    set_value(config, key, value)
                name = "_".join(filter(None, [prefix] + [f"{k}-{v}" for k, v in cell.items()]))
                variants[name] = config
    if not variants:
        raise UserError("compare needs --variants FILE... and/or --grid")
    for config in variants.values():
        (overrides or (lambda c: None))(config)
        config.validate()
    return variants


@dataclass
class Comparison:
    """The ranked table; ``rows`` hold plain numbers (no pandas)."""

    rows: list[dict]
    path: Path | None = None
    pointwise: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def table(self) -> list[dict]:
        return self.rows

    def to_markdown(self) -> str:
        multi = any("log_px_seed_sd" in r for r in self.rows)
        head = [
            "rank",
            "variant",
            "log p(x) ± SE",
            "Δ to best ± paired SE",
            "ELBO",
            "KL",
            "MSE",
            "active",
            "k̂ mean",
            "k̂>0.7",
            "amort. gap",
            "params",
            "train s",
        ]
        if multi:
            head.insert(3, "sd over seeds")
        table = []
        for r in self.rows:
            cells = [
                str(r["rank"]),
                r["variant"],
                f"{r['log_px']:.2f} ± {r['log_px_se']:.2f}",
                f"{r['diff_to_best']:.2f} ± {r['diff_se']:.2f}",
                f"{r['elbo']:.2f}",
                f"{r['kl']:.2f}",
                f"{r['mse']:.4f}",
                f"{r['active_units']:g}",
                f"{r['khat_mean']:.2f}",
                f"{r['khat_frac_gt_0_7']:.0%}",
                f"{r['amortization_gap']:.2f}",
                str(r["parameters"]),
                f"{r['train_seconds']:.1f}",
            ]
            if multi:
                cells.insert(3, f"{r.get('log_px_seed_sd', 0.0):.2f}")
            table.append(cells)
        return markdown_table(head, table)


MEANS = (
    "elbo",
    "kl",
    "mse",
    "distortion",
    "active_units",
    "khat_mean",
    "khat_frac_gt_0_7",
    "amortization_gap",
    "approximation_gap",
)


def compare(
    variants: dict[str, Config],
    out: str | Path,
    workflow: EvalConfig | None = None,
    seeds: int = 1,
    data: Dataset | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Comparison:
    """Train (or reuse) and evaluate every variant with ``seeds`` seeds; write the comparison to ``out``.

    ``out`` must be new, empty or a comparison study (see :mod:`ppl_vae.studies.runner`); a run
    of a variant whose config changed is trained again only with ``overwrite``.
    """
    StudyConfig(seeds=seeds).validate()
    workflow = (workflow or EvalConfig()).validate()
    with open_study(out, "compare") as out:
        return _compare(variants, out, workflow, seeds, data, progress, overwrite)


def _compare(variants, out: Path, workflow: EvalConfig, seeds: int, data, progress: bool, overwrite: bool):
    first = next(iter(variants.values()))
    for name, config in variants.items():
        if config.data != first.data:
            raise UserError(f"variant {name!r} uses other data settings than the rest; a comparison needs one data set")
    data = data or load_data(first.data)
    runs = {(name, s): f"{name}/seed-{s}" if seeds > 1 else name for name in variants for s in range(seeds)}
    jobs = {runs[(name, s)]: _seeded(variants[name], s) for name, s in runs}
    results = run_variants(jobs, out, workflow, data, progress, overwrite, kind="compare")

    pointwise, rows = {}, []
    for name in variants:
        per_seed = [results[runs[(name, s)]] for s in range(seeds)]
        arrays = [np.load(Path(run.path) / EVALUATION / "pointwise.npz", allow_pickle=False) for run, _ in per_seed]
        pointwise[name] = np.mean([a["log_px"] for a in arrays], axis=0)  # (N,) averaged over seeds
        evs = [ev for _, ev in per_seed]
        row = {
            "variant": name,
            "log_px": float(pointwise[name].mean()),
            "log_px_se": mean_se(pointwise[name])[1],
            **{key: float(np.mean([ev[key] for ev in evs])) for key in MEANS},
            "parameters": int(per_seed[0][0].metrics["parameters"]),
            "train_seconds": float(np.mean([run.metrics["seconds"] for run, _ in per_seed])),
            "n_points": int(len(pointwise[name])),
            "k": workflow.k,
            "seeds": seeds,
        }
        if seeds > 1:
            row["log_px_seed_sd"] = float(np.std([ev["log_px"] for ev in evs], ddof=1))
        rows.append(row)
    rows.sort(key=lambda r: -r["log_px"])
    best = rows[0]["variant"]
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["diff_to_best"], row["diff_se"] = paired_difference(pointwise[best], pointwise[row["variant"]])

    comparison = Comparison(rows, out, pointwise)
    write_csv(out / "comparison.csv", rows)
    write_json(out / "comparison.json", {"rows": rows, "data": data.name, "k": workflow.k, "seeds": seeds})
    write_text(out / "comparison.md", comparison.to_markdown())
    figures = out / "figures"
    compare_plots.log_px_paired(rows, figures / "log_px.png")
    compare_plots.rate_distortion_points(rows, figures / "rate_distortion.png")
    khats = {
        name: np.load(Path(results[runs[(name, 0)]][0].path) / EVALUATION / "pointwise.npz", allow_pickle=False)["khat"]
        for name in variants
    }
    compare_plots.khat_boxes(khats, figures / "khat.png")
    x = data.test[:8]
    recon = {name: results[runs[(name, 0)]][0].reconstruct(x)[0] for name in variants}
    compare_plots.reconstructions_side_by_side(x, recon, data.image_shape, figures / "reconstructions.png")
    return comparison


def _seeded(config: Config, offset: int) -> Config:
    seeded = copy.deepcopy(config)
    seeded.train.seed = config.train.seed + offset
    return seeded
