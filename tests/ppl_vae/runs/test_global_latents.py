"""A Bayesian decoder (--decoder-prior normal, and as a user program) through fit, evaluate, sample and compare."""

import json
import math
from pathlib import Path

import arviz as az
import pytest

from ppl_vae.cli import main
from ppl_vae.errors import UserError
from tests.conftest import tiny_config

FAST_FIT = ["--epochs", "3", "--hidden-dim", "32", "--latent-dim", "4", "--no-progress"]
FAST_EVAL = [
    "--k", "16", "--points", "24", "--global-draws", "3", "--gap-points", "4", "--gap-steps", "5",
    "--sbc-simulations", "20", "--sbc-draws", "9", "--idata-points", "5", "--idata-draws", "4", "--no-progress",
]  # fmt: skip
EXAMPLE = str(Path(__file__).resolve().parents[3] / "examples" / "bayesian_decoder.py") + ":bayesian_decoder"


def _evaluated(out: Path, *extra: str) -> dict:
    assert main(["evaluate", str(out), *FAST_EVAL, *extra]) == 0
    return json.loads((out / "evaluation" / "evaluation.json").read_text())


@pytest.mark.parametrize("program", [["--decoder-prior", "normal"], ["--model", EXAMPLE]], ids=["flag", "example"])
def test_a_bayesian_decoder_trains_evaluates_and_samples_on_digits(program, tmp_path):
    out = tmp_path / "bayes"
    assert main(["fit", *program, *FAST_FIT, "--out", str(out)]) == 0
    trust = [] if program[0] == "--decoder-prior" else ["--trust-program"]
    summary = _evaluated(out, *trust)
    assert summary["global_draws"] == 3 and {"w_out", "b_out"} <= set(summary["global_sites"])
    assert "posterior predictive" in summary["log_px_estimand"]
    assert math.isfinite(summary["log_px"]) and math.isfinite(summary["elbo"])
    assert summary["log_px_mc_se_inner"] is not None and summary["log_px_mc_se_outer"] is not None
    assert summary["amortization_gap"] is not None and summary["sbc_pvalue"] is not None
    idata = az.from_netcdf(out / "evaluation" / "inference_data.nc")
    assert idata.posterior["w_out"].dims == ("chain", "draw", "w_out_dim_0", "w_out_dim_1")  # no obs dim
    assert "obs" in idata.posterior["z"].dims
    assert {"w_out", "b_out"} <= set(json.loads(idata.attrs["global_sites"]))
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png"), *trust]) == 0


def test_the_flag_is_refused_where_it_cannot_apply():
    with pytest.raises(UserError, match="--decoder-prior needs one stochastic layer"):
        tiny_config(model={"decoder_prior": "normal", "network": "conv"})
    with pytest.raises(UserError, match="unknown decoder prior 'laplace'"):
        tiny_config(model={"decoder_prior": "laplace"})


def test_compare_ranks_a_bayesian_decoder_beside_a_point_estimate(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--grid", "decoder-prior=none,normal", *FAST_FIT[:-1], "--epochs", "1", "--out", str(out)]
    assert main([*args, *FAST_EVAL]) == 0
    table = json.loads((out / "comparison.json").read_text())
    assert "decoder-prior-normal" in json.dumps(table) and "conclusion" in table
