"""The held-out elpd handed to ArviZ: exact on probabilistic PCA, paired as ``az.compare`` pairs, refused when
the points or K differ; and why ``az.loo`` on the exported posterior draws is refused."""

import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch

from ppl_vae.diagnostics.elpd import check_comparable, compare_elpd, heldout_elpd, point_hashes
from ppl_vae.diagnostics.estimators import importance_sample, psis_khat
from ppl_vae.diagnostics.inference_data import CONDITIONAL_GROUP, to_inference_data
from ppl_vae.diagnostics.statistics import paired_difference
from ppl_vae.errors import UserError
from tests.ppl_vae.linear_gaussian import PPCA, PosteriorGuide, make


@pytest.fixture
def truth():
    return make()


@pytest.fixture
def x(truth):
    return truth.sample(300, torch.Generator().manual_seed(3))


def exact_guide_elpd(ppca, x, k=50):
    """The held-out elpd of ``ppca`` with its exact posterior as the proposal: every log-weight is log p(x)."""
    est = importance_sample(ppca.model, PosteriorGuide(ppca).guide, x, k=k)
    return heldout_elpd(est.log_px.numpy(), k=k, khat=psis_khat(est.log_w), point_hash=point_hashes(x))


def test_heldout_elpd_of_the_exact_posterior_is_the_exact_log_likelihood(truth, x):
    exact = truth.log_px(x).numpy()  # (N,) log N(x; b, WWᵀ + σ²I)
    elpd = exact_guide_elpd(truth, x)
    n = len(exact)
    np.testing.assert_allclose(elpd["loo_i"].values, exact, rtol=0, atol=1e-9)
    assert elpd["elpd_loo"] == pytest.approx(exact.sum(), abs=1e-6)
    # ArviZ's convention (az.loo): se = sqrt(N Var_i), ddof 0
    assert elpd["se"] == pytest.approx(math.sqrt(n * exact.var()), rel=1e-9)
    assert elpd["n_samples"] == 50 and elpd["n_data_points"] == n
    assert math.isnan(elpd["p_loo"])  # held-out: no leave-one-out correction is made
    assert (elpd["pareto_k"].values == 0).all() and not elpd["warning"]  # equal weights: nothing to distrust
    assert "elpd_loo" in str(elpd)  # ArviZ can print it


def test_az_compare_on_heldout_elpds_is_the_paired_difference_of_exact_log_likelihoods(truth, x):
    """Data from σ = 0.5; a second model with σ = 0.8 and the same W, b is worse on every statistic."""
    wrong = PPCA(truth.W, truth.b, 0.8)
    elpds = {"wrong": exact_guide_elpd(wrong, x), "truth": exact_guide_elpd(truth, x)}
    table = az.compare(elpds)  # ArviZ's own ranking, stacking weights, elpd_diff and dse
    assert list(table.index) == ["truth", "wrong"]

    a, b = (elpds[name]["loo_i"].values for name in ("truth", "wrong"))
    d = a - b  # (N,) paired per-point differences
    n = len(d)
    assert table.loc["wrong", "elpd_diff"] == pytest.approx(d.sum(), abs=1e-9)
    assert table.loc["wrong", "dse"] == pytest.approx(math.sqrt(n * d.var()), abs=1e-9)
    # the same numbers, computed from the closed-form log-likelihoods
    exact_d = truth.log_px(x).numpy() - wrong.log_px(x).numpy()
    assert table.loc["wrong", "elpd_diff"] == pytest.approx(exact_d.sum(), abs=1e-6)
    # per datapoint: Δ = elpd_diff / N, SE = dse / N = ppl_vae's paired SE with ddof 0
    mean, se_ddof1 = paired_difference(a, b)
    assert table.loc["wrong", "elpd_diff"] / n == pytest.approx(mean, abs=1e-12)
    assert table.loc["wrong", "dse"] / n == pytest.approx(se_ddof1 * math.sqrt((n - 1) / n), abs=1e-12)
    assert table.loc["wrong", "elpd_diff"] > 5 * table.loc["wrong", "dse"]  # the wrong σ is clearly worse

    ours = compare_elpd(elpds)
    for column in ("rank", "elpd_loo", "elpd_diff", "se", "dse"):
        np.testing.assert_allclose(ours[column].to_numpy(float), table[column].to_numpy(float), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["weight"], table["weight"], atol=1e-4)


def test_psis_loo_on_the_conditional_draws_is_far_off_even_for_the_exact_posterior(truth, x):
    """Why the export has no log_likelihood group: PSIS-LOO over each point's own latent draws estimates
    p(x_i) by a harmonic mean, wrong by many SEs even when q(z|x) is the exact posterior."""
    points = x[:200]
    exact = truth.log_px(points).numpy().sum()
    idata = to_inference_data(truth.model, PosteriorGuide(truth).guide, points, draws=20)
    for call in (az.loo, az.waic):
        with pytest.raises(TypeError, match="log likelihood not found") as refused:
            call(idata)
        assert "\n" not in str(refused.value)

    as_if_log_likelihood = az.from_dict(
        posterior={"z": idata.posterior["z"].values},
        log_likelihood={"x": getattr(idata, CONDITIONAL_GROUP)["x"].values},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ warns about the k̂ it finds
        loo = az.loo(as_if_log_likelihood, pointwise=True)
    assert abs(loo["elpd_loo"] - exact) > 10 * loo["se"], (loo["elpd_loo"], exact)
    assert np.mean(loo["pareto_k"].values > 0.7) > 0.9  # ArviZ's own diagnostic says so too
    assert exact_guide_elpd(truth, points)["elpd_loo"] == pytest.approx(exact, abs=1e-6)


def test_refuses_other_points_or_other_k_in_one_line(truth, x):
    values = truth.log_px(x).numpy()
    base = heldout_elpd(values, k=100, point_hash=point_hashes(x))
    reordered = torch.cat([x[1:], x[:1]])
    others = {
        "K=200": heldout_elpd(values, k=200, point_hash=point_hashes(x)),
        "different test points": heldout_elpd(values, k=100, point_hash=point_hashes(reordered)),
        "299 vs 300 points": heldout_elpd(values[:-1], k=100, point_hash=point_hashes(x[:-1])),
        "does not say which test points": heldout_elpd(values, k=100),
    }
    check_comparable({"a": base, "b": heldout_elpd(values + 1.0, k=100, point_hash=point_hashes(x))})
    for message, other in others.items():
        with pytest.raises(UserError, match=message) as refused:
            compare_elpd({"a": base, "b": other})
        assert "\n" not in str(refused.value)


def test_point_hashes_name_points_in_order_whatever_their_dtype(x):
    h = point_hashes(x)
    assert h.dtype == np.uint64 and len(set(h.tolist())) == len(x)
    single = x.float()  # the same points stored as float32 and as float64 are the same points
    np.testing.assert_array_equal(point_hashes(single), point_hashes(single.double().numpy()))
    assert not np.array_equal(h, point_hashes(x.flip(0)))


@pytest.mark.parametrize("offset", [0.0, -2000.0, 2000.0])
def test_stacking_weights_are_the_known_optimum_even_where_exp_overflows(offset):
    """Variant a predicts 30% of the points (log p 0 vs -50), b the rest: the stacking optimum is w = (0.3, 0.7).

    exp(-2000) underflows and exp(2000) overflows; weights on per-point-shifted values are the same.
    """
    n, share = 100, 0.3
    a_wins = np.arange(n) < share * n
    a = np.where(a_wins, 0.0, -50.0) + offset
    b = np.where(a_wins, -50.0, 0.0) + offset
    h = point_hashes(np.arange(n, dtype=np.float64)[:, None])
    table = compare_elpd({"a": heldout_elpd(a, k=10, point_hash=h), "b": heldout_elpd(b, k=10, point_hash=h)})
    assert table.loc["a", "weight"] == pytest.approx(share, abs=1e-3)
    assert table.loc["b", "weight"] == pytest.approx(1 - share, abs=1e-3)
    assert table.loc["a", "elpd_diff"] == pytest.approx(n * (1 - 2 * share) * 50)  # b is best: 40 points x 50 nats
    unweighted = compare_elpd(
        {"a": heldout_elpd(a, k=10, point_hash=h), "b": heldout_elpd(b, k=10, point_hash=h)}, False
    )
    assert unweighted["weight"].isna().all()
