"""Verdicts follow their thresholds, the per-point Monte Carlo SE is the spread of repeated estimates,
and a comparison's conclusion weighs the larger of the paired SE and the seed spread."""

from dataclasses import MISSING, fields, replace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae.diagnostics import verdicts as v
from ppl_vae.diagnostics.estimators import importance_sample, iwae_mc_se, psis_khat, summarize
from ppl_vae.diagnostics.statistics import seed_sd_of_difference
from ppl_vae.diagnostics.summary import Summary
from tests.ppl_vae.linear_gaussian import PosteriorGuide


def test_khat_verdict_calls_a_too_narrow_guide_unreliable_and_the_exact_guide_not(ppca, x):
    torch.manual_seed(0)
    narrow = importance_sample(ppca.model, PosteriorGuide(ppca, width=0.1).guide, x, k=2000)
    said = v.verdicts(summarize(narrow, psis_khat(narrow.log_w)))
    assert "unreliable" in said["khat"] and "--k" in said["khat"]
    assert "understates" in said["log_px_mc_se"]  # the delta method is not trusted where k̂ > 0.7
    exact = importance_sample(ppca.model, PosteriorGuide(ppca).guide, x, k=200)
    summary = summarize(exact, psis_khat(exact.log_w))
    said = v.verdicts(summary)
    assert "unreliable" not in said["khat"] and "reliable" in said["khat"]
    assert summary.log_px_mc_se_rms < 1e-8 and "small beside" in said["log_px_mc_se"]  # equal weights


def _summary(**numbers):
    """A summary of 100 points at K = 1000 whose other numbers are ``numbers``, or missing."""
    headline = {f.name: None for f in fields(Summary) if f.default is MISSING and f.default_factory is MISSING}
    return Summary(**{**headline, "n_points": 100, "k": 1000, **numbers})


@pytest.mark.parametrize(
    "numbers, diagnostic, words",
    [
        ({"khat_frac_gt_0_7": 0.01, "khat_frac_0_5_to_0_7": 0.0}, "khat", "1 of 100 test points"),
        ({"khat_frac_gt_0_7": 0.0, "khat_frac_0_5_to_0_7": 0.01}, "khat", "usable"),
        ({"khat_frac_gt_0_7": 0.0, "khat_frac_0_5_to_0_7": 0.0}, "khat", "reliable (Yao"),
        ({"log_px_mc_se_rms": 0.11, "khat_frac_gt_0_7": 0.0}, "log_px_mc_se", "raise `--k`"),
        ({"log_px_mc_se_rms": 0.09, "khat_frac_gt_0_7": 0.0}, "log_px_mc_se", "small beside"),
        ({"sbc_pvalue": 0.009}, "sbc", "miscalibrated"),
        ({"sbc_pvalue": 0.011}, "sbc", "no miscalibration"),
        ({"amortization_gap": 2.1, "approximation_gap": 1.0}, "gaps", "encoder limits"),
        ({"amortization_gap": 1.9, "approximation_gap": 1.0}, "gaps", "comparable"),
        ({"amortization_gap": -0.5, "approximation_gap": 1.0}, "gaps", "family limits"),
        ({"amortization_gap": 0.004, "approximation_gap": 0.004}, "gaps", "as close to the posterior"),
        ({"active_units": 3, "latent_variance": [1.0] * 8}, "active_units", "partial posterior collapse"),
        ({"active_units": 4, "latent_variance": [1.0] * 8}, "active_units", "no sign of posterior collapse"),
        ({"active_units": 0, "latent_variance": [1.0] * 8}, "active_units", "collapsed to the prior"),
        ({"accuracy": 0.95}, "accuracy", "test error 5.0%"),
    ],
)
def test_verdicts_follow_their_thresholds(numbers, diagnostic, words):
    said = v.verdicts(_summary(**numbers))
    assert words in said[diagnostic], said[diagnostic]


def test_missing_numbers_give_no_verdict():
    skipped = _summary(sbc_pvalue=None, amortization_gap=None, approximation_gap=None, active_units=0)
    skipped = replace(skipped, latent_variance=[])  # no continuous latent: nothing can collapse
    assert v.verdicts(skipped) == {}
    assert v.verdicts(_summary(sbc_pvalue=float("nan"))) == {}


class PointShiftedGuide(PosteriorGuide):
    """The exact posterior, wider by ``width`` and shifted by ``shift · tanh(x_0)``: a mismatch that varies by point."""

    def guide(self, x):
        loc, cov = self.ppca.posterior(x)
        shift = self.shift * torch.tanh(x[:, :1])  # (B, 1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc + shift, scale_tril=self.width * torch.linalg.cholesky(cov)))


def test_mc_se_is_the_spread_of_repeated_iwae_estimates(ppca, x):
    """SD over 50 independent IWAE-100 runs of each log p̂(x_i) against the delta-method SE of one run."""
    guide = PointShiftedGuide(ppca, width=1.2, shift=0.2).guide
    estimates, predicted = [], []
    for seed in range(50):
        torch.manual_seed(seed)
        est = importance_sample(ppca.model, guide, x, k=100)
        estimates.append(est.log_px.numpy())
        predicted.append(est.log_px_mc_se.numpy())
    empirical = np.std(estimates, axis=0, ddof=1)  # (N,)
    predicted = np.mean(predicted, axis=0)  # (N,) the SE one run reports, averaged over runs
    ratio = predicted / empirical
    assert 0.8 < predicted.mean() / empirical.mean() < 1.2, (predicted.mean(), empirical.mean())
    assert np.mean(np.abs(ratio - 1) < 0.2) > 0.9, ratio  # point by point too (the SD of 50 runs is ±10%)
    assert np.corrcoef(predicted, empirical)[0, 1] > 0.9  # it follows which points are hard
    assert empirical.max() > 1.5 * empirical.min()  # the points do differ, so the last check can fail


def test_mc_se_is_stable_where_the_weights_overflow():
    log_w = torch.tensor([[1000.0, 1000.0, 1000.0, 1000.0], [-1e4, -1e4, -1e4, -1e4 + np.log(3.0)]])
    se = iwae_mc_se(log_w)
    assert se[0] == 0.0
    w = np.array([1.0, 1.0, 1.0, 3.0])  # sd(w) / (√K mean w), sample SD
    assert se[1].item() == pytest.approx(w.std(ddof=1) / (2 * w.mean()), rel=1e-12)


def _rows(diff, se, seed_sd=None):
    best = {"variant": "best", "diff_to_best": 0.0, "diff_se": 0.0}
    other = {"variant": "other", "diff_to_best": diff, "diff_se": se}
    if seed_sd is not None:
        best["diff_seed_sd"], other["diff_seed_sd"] = 0.0, seed_sd
    return [best, other]


def test_conclusion_flips_when_the_seed_spread_exceeds_the_paired_se():
    alone = v.conclusion(_rows(1.0, 0.1))
    assert alone["best"] == "best" and alone["versus"][0]["resolved"]
    assert alone["versus"][0]["basis"] == "paired SE" and "beyond" in alone["sentence"]
    small_spread = v.conclusion(_rows(1.0, 0.1, seed_sd=0.3))  # 1.0 > 2 · 0.3: still resolved, on the seed SD
    assert small_spread["versus"][0]["resolved"] and small_spread["versus"][0]["basis"] == "seed SD"
    flipped = v.conclusion(_rows(1.0, 0.1, seed_sd=0.6))  # 1.0 < 2 · 0.6: the seeds undo it
    assert not flipped["versus"][0]["resolved"] and flipped["versus"][0]["uncertainty"] == 0.6
    assert "not resolved" in flipped["sentence"] and "seed-to-seed spread" in flipped["sentence"]
    # a seed SD below the paired SE leaves the paired SE in charge
    assert v.conclusion(_rows(1.0, 0.6, seed_sd=0.1))["versus"][0]["basis"] == "paired SE"
    tie = v.conclusion(_rows(0.0, 0.0))
    assert not tie["versus"][0]["resolved"]
    assert v.conclusion(_rows(1.0, 0.1)[:1])["versus"] == []


def test_seed_sd_of_difference_pairs_seeds():
    rng = np.random.default_rng(0)
    hard = rng.normal(size=(3, 50)) * 10  # what each seed's runs share point by point cancels
    reference = hard + np.array([[1.0], [2.0], [3.0]])
    assert seed_sd_of_difference(reference, hard) == pytest.approx(1.0)


@pytest.mark.parametrize("outer,inner,raise_", [(0.5, 0.05, "--global-draws"), (0.05, 0.5, "--k"), (0.01, 0.01, "")])
def test_the_posterior_predictive_verdict_says_which_draws_to_raise(outer, inner, raise_):
    text = v.verdicts(_summary(global_draws=10, log_px_mc_se_outer=outer, log_px_mc_se_inner=inner))["global_draws"]
    assert "posterior predictive over 10 draws" in text
    assert (f"raise `{raise_}`" in text) if raise_ else "raise" not in text
