r"""What each workflow number says about a run, and what to try next: one sentence per diagnostic.

Pure functions from an evaluation's :class:`~ppl_vae.diagnostics.summary.Summary` (in a comparison,
with its numbers averaged over seeds) to sentences. Every threshold is a named constant with its
reference, and every diagnostic is one :class:`Rule` of the one registry :data:`RULES`: the summary
fields it reads, the field it is shown beside, and the function that words it. A rule whose numbers
are missing (skipped by ``--gap-points 0``, ``--sbc-simulations 0``, no labels, …) says nothing.

- PSIS k̂ of each point's K importance weights (Vehtari et al. 2024, arXiv:1507.02646; Yao et al.
  2018, arXiv:1802.02538): below 0.5 the weights have finite variance and the IWAE estimate is
  reliable, 0.5–0.7 it is usable but converges slowly, above 0.7 it is unreliable.
- The delta-method Monte Carlo SE of each :math:`\widehat{\log p}(x_i)`
  (:func:`~ppl_vae.diagnostics.estimators.iwae_mc_se`), meaningful where k̂ < 0.5.
- Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788): ranks are uniform when
  q(z|x) is the posterior; p < 0.01 rejects it.
- The gap decomposition (Cremer, Li & Duvenaud 2018, arXiv:1801.03558): the larger of the
  amortization and approximation gaps says whether the encoder or the family limits the bound.
- Active units (Burda et al. 2016, arXiv:1509.00519): few active units of L is posterior collapse.
- With global latents, the Monte Carlo error of the posterior predictive split into its outer
  (draws of θ) and inner (IWAE) parts: which of ``--global-draws`` and ``--k`` to raise.

A comparison ends with :func:`conclusion`: the best variant, its lead Δ over each other variant
per datapoint, and whether Δ exceeds :data:`RESOLVE_Z` times its uncertainty — the larger of the
paired SE over test points and, with several seeds, the seed-to-seed SD of Δ (what retraining
with another seed may change).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .summary import Summary

__all__ = [
    "Rule",
    "RULES",
    "verdicts",
    "reliability",
    "conclusion",
    "KHAT_GOOD",
    "KHAT_BAD",
    "MC_SE_LARGE",
    "SBC_ALPHA",
    "GAP_RATIO",
    "GAP_NEGLIGIBLE",
    "ACTIVE_FRACTION",
    "RESOLVE_Z",
]

KHAT_GOOD = 0.5  # Yao et al. 2018 (arXiv:1802.02538), Vehtari et al. 2024 (arXiv:1507.02646): finite-variance weights
KHAT_BAD = 0.7  # the same: above it the importance-sampling estimate is unreliable at any practical K
MC_SE_LARGE = 0.1  # nats per point: Monte Carlo noise a tenth of a nat is as large as differences between variants
SBC_ALPHA = 0.01  # Talts et al. 2018 (arXiv:1804.06788): the level at which uniformity of the ranks is rejected
GAP_RATIO = 2.0  # Cremer et al. 2018 (arXiv:1801.03558): one gap at least twice the other dominates
GAP_NEGLIGIBLE = 0.01  # nats: a total gap this small is below what the refinement resolves
ACTIVE_FRACTION = 0.5  # Burda et al. 2016 (arXiv:1509.00519): fewer than half the units active is collapse
RESOLVE_Z = 2.0  # a difference beyond twice its uncertainty (about 95% under a normal approximation)
PRACTICAL_EQUIVALENCE = 0.01
"""Nats per datapoint under which two variants are equal in practice, however small the uncertainty.

A lead of 0.01 nats is a likelihood ratio of e^0.01 ≈ 1.01 per point: below the IWAE-K bound's own
gap to log p(x) at the default K and below the spread between retrainings of one variant with
another seed, so a lead this small says nothing about which model is better, even when many
paired test points make it "significant". ``compare --equivalence`` sets another threshold.
"""

TRY_GUIDE = "a richer guide (`--guide iaf`, flows)"


@dataclass(frozen=True)
class Rule:
    """One diagnostic: the :class:`Summary` fields it reads (in ``say``'s argument order) and the one it sits beside."""

    keys: tuple[str, ...]
    beside: str
    say: Callable[..., str | None]  # None: nothing to say about these numbers


def _khat(frac_bad: float, frac_usable: float, n: int) -> str:
    bad, usable = round(frac_bad * n), round(frac_usable * n)
    if bad:
        return (
            f"k̂ > {KHAT_BAD} for {bad} of {n} test points ({frac_bad:.1%}): their log p(x) estimates are unreliable "
            f"(Vehtari et al. 2024); try {TRY_GUIDE}, more particles (`--k`), or IWAE training (`--elbo iwae`)."
        )
    if usable:
        return (
            f"k̂ ≤ {KHAT_BAD} everywhere but above {KHAT_GOOD} for {usable} of {n} test points: the estimates are "
            "usable but converge slowly; a larger `--k` or a richer guide tightens them."
        )
    return f"k̂ < {KHAT_GOOD} for every test point: the log p(x) estimates are reliable (Yao et al. 2018)."


def _mc_se(rms: float, frac_bad: float, k: int, n: int) -> str:
    mean_se = rms / math.sqrt(max(n, 1))
    text = (
        f"Each point's IWAE-{k} log p(x) carries ±{rms:.2g} nats of Monte Carlo error (rms over points), "
        f"the mean over {n} points ±{mean_se:.2g}"
    )
    if frac_bad > 0:
        return text + f"; where k̂ > {KHAT_BAD} the weights' variance is infinite and this understates the error."
    if rms > MC_SE_LARGE:
        return text + f"; above {MC_SE_LARGE} nats per point: raise `--k` (the error falls as 1/√K)."
    return text + ": small beside differences between variants."


def _sbc(p: float) -> str:
    if p < SBC_ALPHA:
        return (
            f"SBC rejects uniform ranks (p = {p:.2g} < {SBC_ALPHA}): q(z|x) is miscalibrated on data simulated "
            "from the model (Talts et al. 2018); evaluation/figures/sbc.png shows how (∪: over-confident, "
            f"∩: under-confident, a slope: biased); try {TRY_GUIDE} or IWAE training."
        )
    return f"SBC finds no miscalibration of q(z|x) (p = {p:.2g} ≥ {SBC_ALPHA}) at this number of simulations."


def _gaps(amortization: float, approximation: float) -> str:
    numbers = f"amortization gap {amortization:.3g} nats, approximation gap {approximation:.3g} nats"
    if amortization + approximation < GAP_NEGLIGIBLE:
        return f"{numbers}: the guide is as close to the posterior as the refinement resolves."
    if amortization > GAP_RATIO * max(approximation, 0.0):
        return (
            f"{numbers}: the encoder limits the bound (Cremer et al. 2018); a bigger encoder (`--hidden-dim`) or less "
            "amortization helps more than a richer family."
        )
    if approximation > GAP_RATIO * max(amortization, 0.0):
        return (
            f"{numbers}: the family limits the bound (Cremer et al. 2018); {TRY_GUIDE} helps more than a bigger "
            "encoder."
        )
    return f"{numbers}: comparable (Cremer et al. 2018); a richer family and a bigger encoder both help."


def _active(n_active: int, variance: list) -> str | None:
    total = len(variance)
    if not total:  # no continuous latent site: nothing can collapse
        return None
    if n_active == 0:
        return (
            f"No latent unit of {total} is active: the posterior has collapsed to the prior (Burda et al. 2016); "
            "try KL annealing (`--anneal linear`) or a smaller `--beta`."
        )
    if n_active < ACTIVE_FRACTION * total:
        return (
            f"Only {n_active:g} of {total} latent units are active: partial posterior collapse (Burda et al. 2016); "
            f"try KL annealing (`--anneal linear`) or fewer latent dimensions (`--latent-dim {n_active:g}`)."
        )
    return f"{n_active:g} of {total} latent units are active: no sign of posterior collapse."


def _global_draws(draws: float, outer: float, inner: float) -> str:
    text = (
        f"log p(x) is the posterior predictive over {draws:g} draws θ ~ q(θ) of the global latents; its Monte Carlo "
        f"error per point is ±{outer:.2g} nats from the draws of θ and ±{inner:.2g} from the inner IWAE"
    )
    if max(outer, inner) <= MC_SE_LARGE:
        return text + "."
    more = "`--global-draws`" if outer >= inner else "`--k`"
    return text + f": raise {more} first (the larger part falls as 1/√ of it)."


def _accuracy(accuracy: float) -> str:
    return (
        f"q(y|x) puts its highest probability on the true label for {accuracy:.1%} of test points "
        f"(test error {1 - accuracy:.1%}, the number semi-supervised VAEs report, Kingma et al. 2014)."
    )


RULES: dict[str, Rule] = {
    "khat": Rule(("khat_frac_gt_0_7", "khat_frac_0_5_to_0_7", "n_points"), "khat_frac_gt_0_7", _khat),
    "log_px_mc_se": Rule(("log_px_mc_se_rms", "khat_frac_gt_0_7", "k", "n_points"), "log_px_mc_se", _mc_se),
    "sbc": Rule(("sbc_pvalue",), "sbc_pvalue", _sbc),
    "gaps": Rule(("amortization_gap", "approximation_gap"), "amortization_gap", _gaps),
    "active_units": Rule(("active_units", "latent_variance"), "active_units", _active),
    "accuracy": Rule(("accuracy",), "accuracy", _accuracy),
    "global_draws": Rule(("global_draws", "log_px_mc_se_outer", "log_px_mc_se_inner"), "log_px", _global_draws),
}
"""Diagnostic name -> its rule; the one table every verdict comes from."""


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def verdicts(summary: Summary) -> dict[str, str]:
    """``{diagnostic: sentence}`` for every rule of :data:`RULES` whose numbers ``summary`` holds.

    Example:
        >>> RULES["sbc"].say(0.3)[:40]
        'SBC finds no miscalibration of q(z|x) (p'
    """
    out = {}
    for name, rule in RULES.items():
        values = [getattr(summary, key) for key in rule.keys]
        text = rule.say(*values) if all(_present(v) for v in values) else None
        if text:
            out[name] = text
    return out


def beside(summary_verdicts: dict[str, str]) -> dict[str, str]:
    """The verdicts keyed by the summary number each is shown beside in a report."""
    return {RULES[name].beside: text for name, text in summary_verdicts.items() if name in RULES}


def conclusion(rows: list[dict], unit: str = "nats per datapoint", equivalence: float = PRACTICAL_EQUIVALENCE) -> dict:
    """Which variant is best, by how much, and whether each lead exceeds :data:`RESOLVE_Z` × its uncertainty.

    ``rows`` are ranked best first, each with ``variant``, ``diff_to_best`` (Δ ≥ 0), ``diff_se``
    (the paired SE over test points) and, with seeds, ``diff_seed_sd`` (the SD over seeds of the
    per-seed Δ). The uncertainty of Δ is the larger of the two. A lead below ``equivalence``
    (:data:`PRACTICAL_EQUIVALENCE`) is ``equivalent``: the variants are equal in practice,
    whatever its z.

    Example:
        >>> rows = [{"variant": "a", "diff_to_best": 0.0, "diff_se": 0.0},
        ...         {"variant": "b", "diff_to_best": 1.0, "diff_se": 0.1, "diff_seed_sd": 0.8}]
        >>> c = conclusion(rows)
        >>> c["best"], c["versus"][0]["basis"], c["versus"][0]["resolved"]
        ('a', 'seed SD', False)
    """
    if not rows:
        return {"best": None, "versus": [], "sentence": "Nothing was compared."}
    best = rows[0]["variant"]
    versus = []
    for row in rows[1:]:
        diff, se, seed_sd = row["diff_to_best"], row["diff_se"], row.get("diff_seed_sd")
        basis, uncertainty = ("seed SD", seed_sd) if seed_sd is not None and seed_sd > se else ("paired SE", se)
        z = diff / uncertainty if uncertainty > 0 else (math.inf if diff > 0 else 0.0)
        versus.append(
            {
                "variant": row["variant"],
                "diff": diff,
                "paired_se": se,
                "seed_sd": seed_sd,
                "uncertainty": uncertainty,
                "basis": basis,
                "z": z,
                "resolved": bool(z > RESOLVE_Z),
                "equivalent": bool(diff < equivalence),
            }
        )
    if not versus:
        return {"best": best, "versus": [], "sentence": f"`{best}` is the only variant: nothing to compare."}
    near = versus[0]
    lead = f"`{best}` is best, {near['diff']:.3g} {unit} above `{near['variant']}`"
    size = f"{near['z']:.1f}× its {near['basis']} ({near['uncertainty']:.2g})"
    if near["equivalent"]:
        beyond = f"; it is {size}, but" if near["resolved"] else f", {size};"
        sentence = (
            f"`{best}` and `{near['variant']}` are equal in practice: `{best}` leads by {near['diff']:.3g} {unit}"
            f"{beyond} a lead below {equivalence:g} {unit} is too small to matter (--equivalence)."
        )
    elif near["resolved"]:
        sentence = f"{lead}: {size}, a difference beyond {RESOLVE_Z:g}× its uncertainty."
    else:
        why = "; the seed-to-seed spread, not the test points, limits it" if near["basis"] == "seed SD" else ""
        sentence = f"{lead}, only {size}: not resolved (within {RESOLVE_Z:g}× its uncertainty){why}."
    resolved = sum(v["resolved"] and not v["equivalent"] for v in versus)
    if len(versus) > 1:
        sentence += f" It leads {resolved} of the {len(versus)} other variants beyond {RESOLVE_Z:g}× the uncertainty."
    return {"best": best, "versus": versus, "sentence": sentence, "equivalence": equivalence}


def reliability(summary: Summary) -> tuple[bool, str]:
    """``(trustworthy, one line)``: whether the headline log p(x) and the guide pass the checks that can fail.

    The headline number is not to be trusted where PSIS k̂ > :data:`KHAT_BAD` for some test
    points (their IWAE estimates can be far off at any practical K) or where SBC rejects the
    guide's calibration at :data:`SBC_ALPHA` (q(z|x) is not the model's posterior). Checks that
    were skipped are named as such.

    Example:
        >>> s = Summary(log_px=-93.1, log_px_se=0.4, elbo=-95.0, elbo_se=0.4, kl=20.0, distortion=75.0,
        ...             mse=0.01, active_units=8, latent_variance=[1.0] * 8, khat_mean=0.2, khat_max=0.6,
        ...             khat_frac_gt_0_7=0.0, khat_frac_0_5_to_0_7=0.01, k=1000, n_points=100, sbc_pvalue=0.4)
        >>> reliability(s)
        (True, 'no warning: k̂ ≤ 0.7 at every test point; SBC finds q(z|x) calibrated (p = 0.4)')
    """
    problems, fine = [], []
    bad = summary.khat_frac_gt_0_7
    if _present(bad):
        (problems if bad > 0 else fine).append(
            f"k̂ > {KHAT_BAD} at {bad:.0%} of test points" if bad > 0 else f"k̂ ≤ {KHAT_BAD} at every test point"
        )
    p = summary.sbc_pvalue
    if _present(p):
        if p < SBC_ALPHA:
            problems.append(f"SBC rejects q(z|x)'s calibration (p = {p:.2g})")
        else:
            fine.append(f"SBC finds q(z|x) calibrated (p = {p:.2g})")
    else:
        fine.append("SBC skipped")
    if problems:
        return False, "log p(x) is not to be trusted as it stands: " + "; ".join(problems)
    return True, "no warning: " + "; ".join(fine)
