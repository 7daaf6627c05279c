r"""Comparing variants on equal terms: same split, seeds, budget, test points and K.

Variants are ranked by ``arviz.compare`` on their held-out elpds
(:func:`ppl_vae.diagnostics.elpd.heldout_elpd`: the IWAE-K :math:`\widehat{\log p}(x_i)` of the
test points). The uncertainty of a difference is ArviZ's *paired* one: with
:math:`d_i = \widehat{\log p}_{\text{best}}(x_i) - \widehat{\log p}_v(x_i)` over the same N points,

.. math::

    \Delta_v = \frac{\texttt{elpd\_diff}}{N} = \bar d, \qquad
    \mathrm{SE}(\Delta_v) = \frac{\texttt{dse}}{N} = \frac{\mathrm{sd}_0(d)}{\sqrt N},

(ddof 0, ArviZ's convention), far smaller than the unpaired SEs when variants agree on which
points are hard. Runs evaluated on other test points, or with another K, are refused. With one
seed the table carries ArviZ's stacking weights (Yao et al. 2018, arXiv:1704.02030), computed on
the test split itself and therefore optimistic; ``figures/elpd_compare.png`` is
``arviz.plot_compare`` of the same table.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, EvalConfig, StudyConfig, get_value, load_config, resolve_key, set_value
from ..data.datasets import Dataset, load_data
from ..diagnostics.elpd import check_comparable, compare_elpd, heldout_elpd
from ..diagnostics.statistics import seed_sd_of_difference
from ..diagnostics.verdicts import PRACTICAL_EQUIVALENCE, conclusion, verdicts
from ..errors import UserError
from ..plots import comparison as compare_plots
from ..runs.evaluation import read_pointwise
from ..runs.layout import EVALUATION
from ..runs.report import markdown_table
from ..storage.atomic import write_csv, write_text
from ..storage.schema import write_table
from .executors import Executor
from .runner import VariantCallback, open_study, run_variants

__all__ = ["Comparison", "compare", "parse_grid", "variants_from"]


def parse_grid(text: str) -> list[dict[str, str]]:
    """``'guide=diagonal,iaf;prior=standard,vamp'`` -> the 4 combinations as dicts.

    Each cell is named by its exact values, so a part that would make a name lie is refused,
    naming the part: an empty value, a value listed twice, an option set twice (under one name
    or two: ``sigma`` and ``model.sigma``).
    """
    axes, seen = [], {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        key = key.strip()
        options = [v.strip() for v in values.split(",")]
        if not sep or not key or not values.strip():
            raise UserError(f"--grid must look like 'guide=diagonal,iaf;prior=standard,vamp', got {part!r}")
        if not all(options):
            raise UserError(f"--grid part {part!r} has an empty value; list each value between commas")
        if len(set(options)) < len(options):  # each cell is named by its exact values: a repeat is one run
            raise UserError(f"--grid lists a value of {key!r} twice: {values.strip()!r}")
        option = resolve_key(key)  # an unknown key fails here, before any variant is trained
        if option in seen:
            raise UserError(
                f"--grid part {part!r} sets {'.'.join(option)} again (part {seen[option]!r} set it); "
                "list all its values in one part"
            )
        seen[option] = part
        axes.append((key, options))
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
    cells = parse_grid(grid) if grid else [{}]
    for config in variants.values():
        set_by_grid = {key: get_value(config, key) for key in cells[0]}
        (overrides or (lambda c: None))(config)
        changed = [key for key, value in set_by_grid.items() if get_value(config, key) != value]
        if changed:  # a variant named for its grid value must run with it
            raise UserError(f"--grid sets {changed[0]!r} and so does an option given beside it; set it in one place")
        config.validate()
    return variants


@dataclass
class Comparison:
    """The ranked table; ``rows`` hold plain numbers (no pandas).

    ``elpds`` are the variants' ``arviz.ELPDData`` and ``arviz_table`` is ``arviz.compare``'s
    ``DataFrame`` of them, from which the rows' ranks, Δ and paired SEs are read.
    """

    rows: list[dict]
    path: Path | None = None
    pointwise: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    elpds: dict = field(default_factory=dict, repr=False)
    arviz_table: Any = field(default=None, repr=False)
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)  # {variant: {diagnostic: sentence}}
    conclusion: dict = field(default_factory=dict)  # :func:`ppl_vae.diagnostics.verdicts.conclusion`

    @property
    def table(self) -> list[dict]:
        return self.rows

    def to_markdown(self) -> str:
        """The ranked table, the note on its numbers, and the ``plot_compare`` figure."""
        multi = any("log_px_seed_sd" in r for r in self.rows)
        weights = any(r.get("stacking_weight") is not None for r in self.rows)
        accuracy = any(r.get("accuracy") is not None for r in self.rows)
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
            head.insert(5, "Δ sd over seeds")
        if weights:
            head.insert(4, "stacking weight")
        if accuracy:
            head.insert(head.index("MSE") + 1, "accuracy")
        table = []
        for r in self.rows:
            cells = [
                str(r["rank"]),
                r["variant"],
                f"{r['log_px']:.2f} ± {r['log_px_se']:.2f}",
                f"{r['diff_to_best']:.2f} ± {r['diff_se']:.2f}",
                f"{r['elbo']:.2f}",
                f"{r['kl']:.2f}",
                _cell(r["mse"], ".4f"),
                f"{r['active_units']:g}",
                f"{r['khat_mean']:.2f}",
                f"{r['khat_frac_gt_0_7']:.0%}",
                _cell(r["amortization_gap"], ".2f"),
                str(r["parameters"]),
                f"{r['train_seconds']:.1f}",
            ]
            if multi:
                cells.insert(3, f"{r.get('log_px_seed_sd', 0.0):.2f}")
                cells.insert(5, _cell(r.get("diff_seed_sd"), ".2f"))
            if weights:
                cells.insert(4, f"{r['stacking_weight']:.2f}")
            if accuracy:
                cells.insert(head.index("accuracy"), _cell(r.get("accuracy"), ".3f"))
            table.append(cells)
        n, k = (self.rows[0]["n_points"], self.rows[0]["k"]) if self.rows else (0, 0)
        notes = [
            "",
            f"Held-out IWAE-{k} log p(x) per datapoint on the same {n} test points, ranked by `arviz.compare`: "
            "Δ = elpd_diff / N and paired SE = dse / N (ArviZ's numbers divided by N; SEs with ddof 0).",
        ]
        if weights:
            notes.append(
                "Stacking weights are fitted on these test points themselves, so they are optimistic: "
                "the best mixture for this split, not an estimate for new data."
            )
        if len(self.rows) > 1:
            notes += ["", "![arviz.plot_compare of the held-out elpd](figures/elpd_compare.png)"]
        for variant, said in self.verdicts.items():
            notes += ["", f"**`{variant}`**", "", *(f"- {name}: {text}" for name, text in said.items())]
        if self.conclusion:
            notes += ["", "## Conclusion", "", self.conclusion["sentence"]]
        notes.append("")
        return markdown_table(head, table) + "\n".join(notes)


def _cell(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mean(values: list) -> float | None:
    """The mean over seeds; ``None`` where an evaluation skipped the number (``--gap-points 0``)."""
    return None if any(v is None for v in values) else float(np.mean(values))


MEANS = (  # the Summary fields a variant's row averages over its seeds
    "elbo",
    "kl",
    "mse",
    "distortion",
    "active_units",
    "khat_mean",
    "khat_frac_gt_0_7",
    "khat_frac_0_5_to_0_7",
    "log_px_mc_se",
    "log_px_mc_se_rms",
    "amortization_gap",
    "approximation_gap",
    "accuracy",  # argmax q(y|x) against the test labels, where the variant's guide classifies
)


def compare(
    variants: dict[str, Config],
    out: str | Path,
    workflow: EvalConfig | None = None,
    seeds: int = 1,
    data: Dataset | None = None,
    progress: bool = True,
    overwrite: bool = False,
    executor: Executor | None = None,
    equivalence: float = PRACTICAL_EQUIVALENCE,
    callbacks: Sequence[VariantCallback] = (),
) -> Comparison:
    """Train (or reuse) and evaluate every variant with ``seeds`` seeds; write the comparison to ``out``.

    ``out`` must be new, empty or a comparison study (see :mod:`ppl_vae.studies.runner`); a run
    of a variant whose config changed is trained again only with ``overwrite``. ``executor``
    (:mod:`ppl_vae.studies.executors`) says where the runs are trained; the results do not depend on it.
    A lead below ``equivalence`` nats per datapoint is concluded to be equal in practice.
    Each of ``callbacks`` is called as ``f(variant, epoch, row)`` after every epoch a variant trains
    (``variant`` names the run, ``name/seed-s`` with several seeds; ``row`` is that epoch's row of
    its ``history.csv``); with a parallel ``executor`` it runs in the worker, so it must pickle.
    """
    StudyConfig(seeds=seeds, equivalence=equivalence).validate()
    workflow = (workflow or EvalConfig()).validate()
    with open_study(out, "compare") as out:
        return _compare(variants, out, workflow, seeds, data, progress, overwrite, executor, equivalence, callbacks)


def _compare(
    variants,
    out: Path,
    workflow: EvalConfig,
    seeds: int,
    data,
    progress: bool,
    overwrite: bool,
    executor,
    equivalence,
    callbacks=(),
):
    first = next(iter(variants.values()))
    for name, config in variants.items():
        if config.data != first.data:
            raise UserError(f"variant {name!r} uses other data settings than the rest; a comparison needs one data set")
    data = data or load_data(first.data)
    runs = {(name, s): f"{name}/seed-{s}" if seeds > 1 else name for name in variants for s in range(seeds)}
    jobs = {runs[(name, s)]: _seeded(variants[name], s) for name, s in runs}
    results = run_variants(
        jobs, out, workflow, data, progress, overwrite, kind="compare", executor=executor, callbacks=callbacks
    )

    pointwise, rows, elpds, per_run, by_seed, said = {}, {}, {}, {}, {}, {}
    for name in variants:
        per_seed = [results[runs[(name, s)]] for s in range(seeds)]
        arrays = [read_pointwise(run.path) for run, _ in per_seed]
        by_seed[name] = np.stack([a["log_px"] for a in arrays])  # (S, N)
        for s, a in enumerate(arrays):  # every run's own points and K are checked, seeds included
            per_run[runs[(name, s)]] = heldout_elpd(a["log_px"], k=int(a["k"]), point_hash=a["point_hash"])
        pointwise[name] = np.mean([a["log_px"] for a in arrays], axis=0)  # (N,) averaged over seeds
        elpds[name] = heldout_elpd(
            pointwise[name],
            k=int(arrays[0]["k"]),
            khat=np.max([a["khat"] for a in arrays], axis=0),  # the least reliable seed's k̂ per point
            point_hash=arrays[0]["point_hash"],
        )
        evs = [ev for _, ev in per_seed]
        rows[name] = {
            "variant": name,
            **{key: _mean([getattr(ev, key) for ev in evs]) for key in MEANS},
            "parameters": int(per_seed[0][0].metrics["parameters"]),
            "train_seconds": float(np.mean([run.metrics["seconds"] for run, _ in per_seed])),
            "n_points": int(len(pointwise[name])),
            "k": workflow.k,
            "seeds": seeds,
        }
        if seeds > 1:
            rows[name]["log_px_seed_sd"] = float(np.std([ev.log_px for ev in evs], ddof=1))
        # seed 0's summary with the seed means where there are several
        said[name] = verdicts(replace(evs[0], **{key: rows[name][key] for key in MEANS}))
    check_comparable(per_run)
    _check_same_columns({name: results[runs[(name, 0)]][0] for name in variants}, data)
    # stacking mixes predictive densities: a seed-averaged log p(x) is not one, so no weights then
    table = compare_elpd(elpds, stacking=seeds == 1)
    ranked = [_ranked(rows[name], entry) for name, entry in table.iterrows()]
    if seeds > 1:  # the spread of each Δ over retrainings: seed s of the best against seed s of the variant
        for r in ranked:
            r["diff_seed_sd"] = seed_sd_of_difference(by_seed[ranked[0]["variant"]], by_seed[r["variant"]])
    said = {r["variant"]: said[r["variant"]] for r in ranked}
    concluded = conclusion(ranked, equivalence=equivalence)

    comparison = Comparison(ranked, out, pointwise, elpds, table, said, concluded)
    write_csv(out / "comparison.csv", ranked)
    write_table(
        out / "comparison.json",
        {
            "rows": ranked,
            "data": data.name,
            "k": workflow.k,
            "seeds": seeds,
            "verdicts": said,
            "conclusion": concluded,
        },
    )
    write_text(out / "comparison.md", comparison.to_markdown())
    figures = out / "figures"
    if len(table) > 1:  # ArviZ's plot_compare needs two variants
        compare_plots.elpd_compare(table, figures / "elpd_compare.png")
    compare_plots.rate_distortion_points(ranked, figures / "rate_distortion.png")
    khats = {
        name: np.load(Path(results[runs[(name, 0)]][0].path) / EVALUATION / "pointwise.npz", allow_pickle=False)["khat"]
        for name in variants
    }
    compare_plots.khat_boxes(khats, figures / "khat.png")
    x = data.test[:8]
    labels = None if data.test_labels is None else data.test_labels[:8]
    recon = {}
    for name in variants:
        run = results[runs[(name, 0)]][0]
        decodings = run.reconstruct(x, **run.inputs(labels))  # None for a program with no observed site holding x
        if decodings is not None:
            recon[name] = decodings[0]
    if recon:
        compare_plots.reconstructions_side_by_side(x, recon, data.image_shape, figures / "reconstructions.png")
    return comparison


def _check_same_columns(runs: dict, data: Dataset) -> None:
    """Refuse, in one line, to rank runs whose log p(x) are densities of different columns of x.

    A conditional program observes some of x's columns (``obs=x[:, half:]``): its log p(x) is
    log p(x_out | x_in), which a program observing all of x does not estimate.
    """
    from ..inference.predictive import data_columns
    from ..runs.figures import first_rows

    x, labels = data.test[:2], None if data.test_labels is None else data.test_labels[:2]
    predicted = {}
    for name, run in runs.items():
        part = data_columns(run.program.model, x.to(run.device), **first_rows(run.inputs(labels), 2))
        predicted[name] = None if part is None else part[1].tolist()  # None: all of x, as far as we can tell
    first, d = next(iter(predicted)), x[0].numel()
    for name, columns in predicted.items():
        if columns != predicted[first]:
            said = {
                n: f"all {d} columns of x" if c is None else f"{len(c)} of x's {d} columns"
                for n, c in predicted.items()
            }
            raise UserError(
                f"{name!r} is a density of {said[name]} and {first!r} of {said[first]} (a conditional program's "
                "log p(x) is log p(x_out | x_in)): their log p(x) are not comparable; compare programs that "
                "observe the same columns"
            )


def _ranked(row: dict, entry) -> dict:
    """``row`` with ArviZ's comparison numbers: sums over the N points, and per datapoint (÷ N)."""
    n = row["n_points"]
    weight = float(entry["weight"])
    return {
        "rank": int(entry["rank"]) + 1,
        "variant": row["variant"],
        "log_px": float(entry["elpd_loo"]) / n,
        "log_px_se": float(entry["se"]) / n,
        "diff_to_best": float(entry["elpd_diff"]) / n,
        "diff_se": float(entry["dse"]) / n,
        "elpd": float(entry["elpd_loo"]),
        "elpd_se": float(entry["se"]),
        "elpd_diff": float(entry["elpd_diff"]),
        "dse": float(entry["dse"]),
        "stacking_weight": None if np.isnan(weight) else weight,
        "khat_warning": bool(entry["warning"]),
        **{key: value for key, value in row.items() if key != "variant"},
    }


def _seeded(config: Config, offset: int) -> Config:
    seeded = copy.deepcopy(config)
    seeded.train.seed = config.train.seed + offset
    return seeded
