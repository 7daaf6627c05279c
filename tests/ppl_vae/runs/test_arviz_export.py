"""What a user gets from ArviZ on the run ``make run`` writes: ``az.loo`` refused, the held-out elpd one call away."""

import json
import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch
from pyro import poutine

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.diagnostics.inference_data import CONDITIONAL_GROUP
from ppl_vae.errors import UserError
from ppl_vae.runs.evaluation import read_heldout_elpd

# `make run` is `ppl-vae fit --out RUN` then `ppl-vae evaluate RUN` with the defaults; only the budget is smaller
FIT = ["--epochs", "3", "--no-progress"]
EVALUATE = ["--k", "100", "--gap-points", "10", "--gap-steps", "20", "--sbc-simulations", "50", "--no-progress"]


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("make-run") / "digits"
    assert main(["fit", "--out", str(out), *FIT]) == 0
    assert main(["evaluate", str(out), *EVALUATE]) == 0
    return out


def test_az_loo_on_the_make_run_export_refuses_in_one_line(make_run):
    """The old export put log p(x_i | z) here and az.loo answered elpd_loo 8021.96 with every k̂ > 1."""
    idata = az.from_netcdf(make_run / "evaluation" / "inference_data.nc")
    assert "log_likelihood" not in idata.groups()
    assert "sample_stats" not in idata.groups()  # ArviZ's legacy place for a log-likelihood stays empty too
    for call in (az.loo, az.waic):
        with pytest.raises(TypeError, match="log likelihood not found") as refused:
            call(idata)
        assert "\n" not in str(refused.value)
    with pytest.raises(TypeError, match="Encountered error in ELPD computation of compare"):
        az.compare({"a": idata, "b": idata})
    assert "heldout_elpd()" in idata.attrs["heldout_elpd"]  # the file says where the elpd is


def test_the_conditional_draws_are_what_their_attributes_say(make_run):
    """log p(x_i | z_s) at the exported z_s ~ q(z|x_i), recomputed from the run's own program."""
    run = ppl_vae.load(make_run)
    idata = az.from_netcdf(make_run / "evaluation" / "inference_data.nc")
    conditional = getattr(idata, CONDITIONAL_GROUP)
    assert conditional["x"].dims == ("chain", "draw", "obs") and conditional["x"].shape == (1, 20, 200)
    assert "q(z | x_i)" in conditional.attrs["quantity"] and "not an elpd" in conditional.attrs["not_for_loo"]
    x = torch.from_numpy(idata.observed_data["x"].values)
    z = torch.from_numpy(idata.posterior["z"].values[0])  # (S, N, L)
    for s in (0, 19):
        trace = poutine.trace(poutine.condition(run.program.model, data={"z": z[s]})).get_trace(x)
        expected = trace.nodes["x"]["fn"].log_prob(x).detach().numpy()  # (N,)
        np.testing.assert_allclose(conditional["x"].values[0, s], expected, rtol=1e-5, atol=1e-3)

    # what az.loo would have said on them: every point flagged by ArviZ's own k̂
    as_before = az.from_dict(posterior={"z": z[None].numpy()}, log_likelihood={"x": conditional["x"].values})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        old = az.loo(as_before, pointwise=True)
    assert np.mean(old["pareto_k"].values > 0.7) > 0.9


def test_heldout_elpd_is_the_evaluated_log_px_in_arviz_conventions(make_run):
    run = ppl_vae.load(make_run)
    elpd = run.heldout_elpd()
    evaluation = json.loads((make_run / "evaluation" / "evaluation.json").read_text())
    pointwise = np.load(make_run / "evaluation" / "pointwise.npz")
    n = evaluation["n_points"]
    assert n == len(run.dataset().test) == elpd["n_data_points"]
    assert elpd["n_samples"] == evaluation["k"] == 100
    assert elpd["elpd_loo"] == pytest.approx(n * evaluation["log_px"], rel=1e-12)
    np.testing.assert_array_equal(elpd["loo_i"].values, pointwise["log_px"])
    np.testing.assert_array_equal(elpd["pareto_k"].values, pointwise["khat"])
    # evaluation.json's SE of the mean has ddof 1; ArviZ's elpd se has ddof 0
    assert elpd["se"] == pytest.approx(n * evaluation["log_px_se"] * math.sqrt((n - 1) / n), rel=1e-9)
    table = az.compare({"run": elpd, "same": read_heldout_elpd(make_run)})
    assert table["elpd_diff"].tolist() == [0.0, 0.0] and table["dse"].tolist() == [0.0, 0.0]


def test_the_evaluation_says_what_its_numbers_mean(make_run):
    """Verdicts from the evaluated numbers in evaluation.json and beside them in the report; the MC SE per point."""
    import html
    import re

    from ppl_vae.diagnostics.summary import Summary
    from ppl_vae.diagnostics.verdicts import verdicts

    evaluation = json.loads((make_run / "evaluation" / "evaluation.json").read_text())
    said = evaluation.pop("verdicts")
    assert said == verdicts(Summary.from_json(evaluation))
    assert {"khat", "log_px_mc_se", "sbc", "gaps", "active_units"} <= set(said)
    mc_se = np.load(make_run / "evaluation" / "pointwise.npz")["log_px_mc_se"]
    assert mc_se.shape == (evaluation["n_points"],) and (mc_se >= 0).all()
    assert evaluation["log_px_mc_se"] == pytest.approx(mc_se.mean(), rel=1e-12)
    assert evaluation["log_px_mc_se_rms"] == pytest.approx(np.sqrt(np.mean(mc_se**2)), rel=1e-12)
    report = (make_run / "report.md").read_text()
    khat_row = next(line for line in report.splitlines() if line.startswith("| share of test points with k̂ > 0.7"))
    assert khat_row.count(" | ") == 3 and said["khat"] in khat_row  # quantity | value | unit | verdict
    sbc_row = next(line for line in report.splitlines() if line.startswith("| SBC: p-value"))
    assert said["sbc"].replace("|", "\\|") in sbc_row  # q(z|x)'s pipe escaped, not a cell boundary
    page = (make_run / "report.html").read_text()
    cells = re.findall(r"<td>(.*?)</td>", page)
    (verdict,) = [c for c in cells if c.startswith(html.escape(said["sbc"][:20]))]  # one cell holds it whole
    assert re.sub(r"</?code>", "", verdict).replace("&quot;", '"') == html.escape(said["sbc"], quote=False).replace(
        "`", ""
    )


def test_a_run_evaluated_before_point_identities_is_refused_in_one_line(make_run, tmp_path):
    arrays = dict(np.load(make_run / "evaluation" / "pointwise.npz"))
    del arrays["point_hash"]
    (tmp_path / "evaluation").mkdir()
    with open(tmp_path / "evaluation" / "pointwise.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(UserError, match="point_hash.*ppl-vae evaluate") as refused:
        read_heldout_elpd(tmp_path)
    assert "\n" not in str(refused.value)
    with pytest.raises(UserError, match="no pointwise.npz"):
        read_heldout_elpd(tmp_path / "nowhere")


def test_the_readme_arviz_calls_answer_on_the_export(make_run, tmp_path):
    """README's "ArviZ on a run", call by call, on the export and a second evaluation of the same run."""
    plt = pytest.importorskip("matplotlib.pyplot")
    import shutil

    idata = az.from_netcdf(make_run / "evaluation" / "inference_data.nc")
    az.plot_ppc(idata, num_pp_samples=20, random_seed=0)
    summary = az.summary(idata, var_names=["z"], coords={"obs": [0]}, kind="stats")
    z0 = idata.posterior["z"].values[0, :, 0]  # (S, L) the draws of point 0's latent
    np.testing.assert_allclose(summary["mean"].to_numpy(), z0.mean(0), atol=5e-4)  # ArviZ rounds to 3 digits
    np.testing.assert_allclose(summary["sd"].to_numpy(), z0.std(0, ddof=1), atol=5e-4)
    az.plot_posterior(idata, var_names=["z"], coords={"obs": 0})

    elpd = ppl_vae.load(make_run).heldout_elpd()
    assert "elpd_loo" in str(elpd) and "Pareto k" in str(elpd)
    az.plot_khat(elpd)
    other = tmp_path / "again"  # the same run evaluated with other draws: a fair second variant
    shutil.copytree(make_run, other)
    assert main(["evaluate", str(other), *EVALUATE, "--eval-seed", "1"]) == 0
    table = az.compare({"first": elpd, "again": ppl_vae.load(other).heldout_elpd()})
    d = elpd["loo_i"].values - ppl_vae.load(other).heldout_elpd()["loo_i"].values
    assert abs(table["elpd_diff"].max() - abs(d.sum())) < 1e-9
    assert table["dse"].max() == pytest.approx(math.sqrt(len(d) * d.var()), abs=1e-9)
    az.plot_compare(table.copy(), plot_ic_diff=True)
    plt.close("all")
