"""The evaluation summary reads the evaluation.json that runs on disk hold and writes it back key for key."""

import copy
import json
from dataclasses import fields

import pytest

from ppl_vae.diagnostics.summary import Summary
from ppl_vae.diagnostics.verdicts import RULES
from ppl_vae.errors import UserError

# an evaluation.json as `ppl-vae evaluate` wrote it before the summary was a type (its lists cut short)
WRITTEN = {
    "active_units": 0,
    "amortization_gap": 8.029336595535266,
    "approximation_gap": 79.56001762140926,
    "distortion": 506.87806787109383,
    "distortion_by_site": {"x": 506.87806787109383},
    "elbo": -508.27329669570923,
    "elbo_se": 13.262869305786591,
    "gap_points": 5,
    "gap_sites": {"z": "Normal per datapoint"},
    "inputs": [],
    "k": 20,
    "khat_frac_0_5_to_0_7": 0.0,
    "khat_frac_gt_0_7": 1.0,
    "khat_max": float("inf"),
    "khat_mean": float("inf"),
    "kl": 1.3952288246154785,
    "latent_variance": [0.0019117425592046612, 0.005174294365077025],
    "log_px": -431.93571698048225,
    "log_px_mc_se": 0.9608475782840264,
    "log_px_mc_se_rms": 0.9645089141510358,
    "log_px_se": 12.362985231155301,
    "mse": 0.18607232451438904,
    "mse_by_site": {"x": 0.18607232451438904},
    "n_points": 50,
    "posterior_variance": [0.342092500339768, 0.5614105510824707],
    "sampler": "eager importance sampler: 1 chunks (--compile-sampler auto: compiled from 1000)",
    "sbc_pvalue": 0.5350527021930129,
    "sbc_pvalues": [0.1223252280386625, 0.7399182920946538],
    "schema": 1,
    "seconds": 7.007371758998488,
    "verdicts": {"sbc": "SBC finds no miscalibration of q(z|x) (p = 0.54 ≥ 0.01) at this number of simulations."},
    "versions": {"arviz": "0.23.4", "ppl_vae": "0.1.0", "pyro-ppl": "1.9.2", "torch": "2.14.1+cu130"},
}

SKIPPED = {  # --gap-points 0 --sbc-simulations 0, labelled test points, global latents whose MC SE is not finite
    "accuracy": 0.9,
    "amortization_gap": None,
    "approximation_gap": None,
    "gap_points": 0,
    "gaps_skipped": "--gap-points 0",
    "sbc_pvalue": None,
    "sbc_pvalues": [],
    "sbc_skipped": "--sbc-simulations 0",
    "global_draws": 3,
    "global_sites": ["w_out"],
    "local_diagnostics": "gaps and calibration of q(z | x, theta) at one draw theta ~ q(theta)",
    "log_px_estimand": "posterior predictive log E_q(theta)[p(x|theta)], theta: the global latents",
    "log_px_mc_se": None,
    "log_px_mc_se_rms": None,
    "log_px_mc_se_inner": None,
    "log_px_mc_se_outer": None,
    "figures_absent": {"sbc.png": "calibration was skipped: --sbc-simulations 0"},
}


def _json(table: dict) -> str:
    return json.dumps(table, indent=2, sort_keys=True, allow_nan=True)  # as write_table writes it


@pytest.mark.parametrize(
    "table",
    [WRITTEN, {**{k: v for k, v in WRITTEN.items() if k != "gap_sites"}, **SKIPPED}],
    ids=["full", "skipped"],
)
def test_a_written_evaluation_reads_and_writes_back_byte_for_byte(table):
    summary = Summary.from_json(copy.deepcopy(table))
    assert _json({"schema": 1, **summary.to_json()}) == _json(table)


def test_fields_a_run_did_not_have_are_absent_not_null():
    written = Summary.from_json(WRITTEN).to_json()
    for name in ("accuracy", "global_draws", "log_px_mc_se_inner", "log_px_mc_se_outer", "gaps_skipped", "sbc_skipped"):
        assert name not in written
    skipped = Summary.from_json({**WRITTEN, "sbc_pvalue": None}).to_json()
    assert skipped["sbc_pvalue"] is None  # a number the evaluation skipped is null, not absent


def test_an_older_evaluation_loads_and_a_newer_field_is_ignored():
    older = {k: v for k, v in WRITTEN.items() if k not in ("sampler", "inputs", "verdicts", "mse_by_site", "versions")}
    summary = Summary.from_json({**older, "a_later_number": 1.0})
    assert summary.sampler == "" and summary.inputs == [] and summary.verdicts == {} and summary.versions is None
    assert summary.log_px == WRITTEN["log_px"]


NO_LOG_PX = {k: v for k, v in WRITTEN.items() if k != "log_px"}


WRONG_TYPES = {  # a hand-edited file: each field of the wrong type is refused, so a study evaluates again
    "log_px": "-93.1",
    "n_points": "x",
    "k": True,
    "latent_variance": 5,
    "khat_frac_gt_0_7": [1],
    "verdicts": 3,
    "distortion_by_site": {"x": "506"},
    "global_sites": [1],
}


@pytest.mark.parametrize(
    "table",
    [[1, 2], NO_LOG_PX, *({**WRITTEN, key: value} for key, value in WRONG_TYPES.items())],
    ids=["list", "no-log_px", *WRONG_TYPES],
)
def test_a_table_that_is_no_evaluation_is_refused_in_one_line(table):
    with pytest.raises(UserError, match="evaluation.json") as refused:
        Summary.from_json(table)
    assert refused.value.hint and "\n" not in str(refused.value)


def test_every_verdict_reads_fields_of_the_summary():
    names = {f.name for f in fields(Summary)}
    for rule in RULES.values():
        assert set(rule.keys) <= names and rule.beside in names
