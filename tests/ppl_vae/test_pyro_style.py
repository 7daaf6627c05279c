"""Programs written the way Pyro's examples are (``examples/pyro_style/``), unchanged, through the whole bench.

Each is fitted, evaluated (gaps, SBC, the ArviZ export), sampled from the command line and
compared, on digits with a few epochs; the numbers that are known are checked: log p(x) ≥ ELBO,
the export's groups and variables, what ``metrics.json`` says was run.
"""

import json
from pathlib import Path

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import ppl_vae
from ppl_vae.cli import build_parser, main, overrides_from_args
from ppl_vae.config import EvalConfig, StudyConfig
from ppl_vae.diagnostics.inference_data import data_variable, point_dim
from ppl_vae.diagnostics.verdicts import PRACTICAL_EQUIVALENCE, conclusion
from ppl_vae.errors import UserError
from ppl_vae.inference.objectives import Objective
from ppl_vae.inference.plates import find_data_plate
from ppl_vae.inference.trial import check_program
from ppl_vae.runs.build import ModelAndGuide
from ppl_vae.runs.evaluation import evaluate_run
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
EVAL = EvalConfig(k=16, gap_points=8, gap_steps=20, sbc_simulations=30, sbc_draws=9, idata_points=6, idata_draws=3)
GROUPS = {"posterior", "posterior_predictive", "observed_data", "prior", "prior_predictive"}


def spec(name: str) -> str:
    return f"{ROOT}/examples/pyro_style/{name}"


CASES = {  # factory -> (config sections, latent sites, observed sites, data plate)
    "vae.py:make": ({}, ["latent"], ["obs"], "data"),
    "cvae.py:make": ({}, ["z"], ["y"], "data"),
    "m2_batch.py:make": ({"data": {"labels": "300"}, "train": {"elbo": "traceenum"}}, ["y", "z"], ["x"], "batch"),
    "names.py:draw_pixel": ({}, ["draw"], ["pixel"], "data"),
    "names.py:chain_y": ({}, ["chain"], ["y"], "data"),
    "names.py:obs_latent": ({}, ["obs"], ["latent"], "data"),
    "names.py:dotted": ({}, ["encoder.z"], ["decoder/x"], "data"),
}


def _config(factory: str, **sections):
    base = {"model": {"program": spec(factory), "latent_dim": 4}, "train": {"epochs": 3, "batch_size": 64}}
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return tiny_config(**base)


@pytest.mark.parametrize("factory", list(CASES))
def test_a_pyro_style_program_goes_through_fit_evaluate_and_sample(tmp_path, factory):
    sections, latent, observed, plate = CASES[factory]
    run = ppl_vae.fit(_config(factory, **sections), tmp_path / "run", progress=False)
    assert run.history[-1]["test_elbo"] > run.history[0]["test_elbo"] - 1.0  # it trains, not diverges
    # metrics.json says what was run, and nothing that was not
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == spec(factory) and metrics["guide"] == spec(factory)
    assert metrics["latent_sites"] == latent and metrics["observed_sites"] == observed
    assert metrics["data_plate"] == plate and len(metrics["model_sha256"]) == 64
    assert not {"sigma", "prior", "likelihood"} & set(metrics)
    assert run.model_module is run.program.model_module and run.guide_module is run.model_module

    summary = evaluate_run(run, EVAL, progress=False)
    assert summary.log_px >= summary.elbo - 1e-6, summary
    assert summary.approximation_gap is not None and summary.amortization_gap is not None
    assert summary.sbc_pvalue is not None, summary.sbc_skipped  # the cvae: its columns of x simulated
    idata = az.from_netcdf(tmp_path / "run" / "evaluation" / "inference_data.nc")
    assert GROUPS <= set(idata.groups())
    names = json.loads(idata.attrs["site_names"])  # variable -> site
    assert sorted(names.values()) == sorted(set(latent) | set(observed))
    points = point_dim(idata)
    for variable, site in names.items():
        group = idata.observed_data if site in observed else idata.posterior
        assert points in group[variable].dims and variable not in group[variable].dims
    assert (data_variable(idata) is None) == (factory == "cvae.py:make")  # its site holds half of x
    report = (tmp_path / "run" / "report.md").read_text()
    assert "sigma" not in report  # the built-in model's options did not run, so the report does not name them
    assert not any(f"(`{name}`): not drawn" in report for name in ("elbo.png", "reconstructions.png", "samples.png"))
    if factory == "cvae.py:make":  # draws of half of x are not images of the data: the report says why they are absent
        assert "(`ppc.png`): not drawn, no observed site of the model holds x" in report

    png = tmp_path / "samples.png"
    assert main(["sample", str(tmp_path / "run"), "--out", str(png), "--trust-program", "--n", "8"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_conditional_program_keeps_what_it_is_given_and_decodes_the_rest(tmp_path):
    """The cvae's observed site is x's second half: samples and decodings keep the first half, predict the second."""
    run = ppl_vae.fit(_config("cvae.py:make"), tmp_path / "cvae", progress=False)
    x = run.dataset().test[:6]
    half = run.model_module.half
    samples, decodings = run.sample(6, like=x), run.reconstruct(x, 2)
    assert torch.equal(samples[:, :half], x[:, :half]) and torch.equal(
        decodings[:, :, :half], x[:, :half].expand(2, 6, -1)
    )
    assert ((samples[:, half:] > 0) & (samples[:, half:] < 1)).all()  # Bernoulli means in the predicted half
    report = (tmp_path / "cvae" / "report.md").read_text()
    assert "samples.png" in report and "reconstructions.png" in report


def test_loaded_runs_of_pyro_style_programs_train_under_plain_svi(tmp_path):
    """A loaded run's programs, renamed plate included, under ``pyro.infer.SVI``: every parameter moves."""
    ppl_vae.fit(_config("m2_batch.py:make", **CASES["m2_batch.py:make"][0]), tmp_path / "m2", progress=False)
    run = ppl_vae.load(tmp_path / "m2", trust_program=True)
    assert run.program.data_plate == "batch"
    before = {name: p.detach().clone() for name, p in run.program.named_parameters()}
    svi = SVI(run.program.model, run.program.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    x, y = run.dataset().train[:64], torch.as_tensor(run.dataset().train_labels[:64])
    for _ in range(3):
        svi.step(x, y=y)
    assert [n for n, p in run.program.named_parameters() if torch.equal(p, before[n])] == []


def test_compare_reports_accuracy_and_a_batch_plate_program_beside_a_data_plate_one(tmp_path):
    from ppl_vae.studies.compare import compare

    common = {"data": {"labels": "300"}, "train": {"elbo": "traceenum"}}
    variants = {
        "batch-plate": _config("m2_batch.py:make", **common),
        "data-plate": tiny_config(
            model={"program": f"{ROOT}/examples/ss_vae_m2.py:m2_small", "latent_dim": 4},
            train={"epochs": 3, "batch_size": 64, "elbo": "traceenum"},
            data={"labels": "300"},
        ),
    }
    workflow = EvalConfig(k=8, gap_points=0, sbc_simulations=0, idata_points=4, idata_draws=2)
    table = compare(variants, tmp_path / "cmp", workflow, progress=False)
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    for row in (*table.rows, *saved["rows"]):
        assert 0.0 <= row["accuracy"] <= 1.0
    assert "accuracy" in table.to_markdown().splitlines()[0]
    assert saved["conclusion"]["equivalence"] == PRACTICAL_EQUIVALENCE


def test_compare_refuses_to_rank_a_conditional_density_beside_a_joint_one(tmp_path):
    """The cvae's log p(x) is log p(x_out | x_in) over half of x's columns: no ranking against a VAE of all of x."""
    from ppl_vae.studies.compare import compare

    variants = {name: _config(f"{name}.py:make", train={"epochs": 1}) for name in ("cvae", "vae")}
    workflow = EvalConfig(k=4, points=8, gap_points=0, sbc_simulations=0, idata_points=2, idata_draws=2)
    with pytest.raises(UserError, match=r"^'vae' is a density of all 64 columns of x and 'cvae' of 32 of x's 64 col"):
        compare(variants, tmp_path / "cmp", workflow, progress=False)
    assert not (tmp_path / "cmp" / "comparison.json").exists()


def test_a_lead_below_the_practical_threshold_is_equal_in_practice_however_small_its_se():
    rows = [
        {"variant": "a", "diff_to_best": 0.0, "diff_se": 0.0},
        {"variant": "b", "diff_to_best": 1e-4, "diff_se": 1e-6},  # z = 100: "resolved", and meaningless
    ]
    said = conclusion(rows)
    assert said["versus"][0]["resolved"] and said["versus"][0]["equivalent"]
    assert "equal in practice" in said["sentence"] and "0.0001" in said["sentence"]
    strict = conclusion(rows, equivalence=0.0)
    assert not strict["versus"][0]["equivalent"] and "beyond 2× its uncertainty" in strict["sentence"]
    # the threshold is one option, with its flag on compare
    args = build_parser().parse_args(["compare", "--out", "x", "--grid", "guide=diagonal", "--equivalence", "0.5"])
    assert overrides_from_args(args, ["study"]) == {"study": {"equivalence": 0.5}}
    assert StudyConfig().equivalence == PRACTICAL_EQUIVALENCE


# --- the data plate under the user's name --------------------------------------------------------------------------


class Plates(nn.Module):
    """A VAE whose plate over the batch is named ``outer``; ``inner`` (size 3) nests inside it."""

    def __init__(self, outer: str = "batch", inner_size: int = 3, inner_name: str = "inner"):
        super().__init__()
        self.outer, self.inner_size, self.inner_name = outer, inner_size, inner_name
        self.enc, self.dec = nn.Linear(4, 2), nn.Linear(1, 4)

    def model(self, x):
        with pyro.plate(self.outer, x.shape[0], dim=-2):
            with pyro.plate(self.inner_name, self.inner_size, dim=-1):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(self.dec(z.mean(-1, keepdim=True)), 0.5).to_event(1), obs=x.unsqueeze(-2))

    def guide(self, x):
        with pyro.plate(self.outer, x.shape[0], dim=-2):
            with pyro.plate(self.inner_name, self.inner_size, dim=-1):
                loc = self.enc(x)[..., :1].expand(x.shape[:-1] + (self.inner_size,))
                pyro.sample("z", dist.Normal(loc, 1.0))


def _trial(module, named=""):
    program = ModelAndGuide(module, module)
    check_program(program, Objective("trace"), [("", torch.randn(4, 4), {})], "prog.py:make", data_plate=named)
    return program


def test_the_data_plate_is_found_by_its_size_and_renamed_for_the_bench():
    program = _trial(Plates("batch"))
    assert program.data_plate == "batch"
    trace = pyro.poutine.trace(program.model).get_trace(torch.randn(5, 4))
    assert [f.name for f in trace.nodes["z"]["cond_indep_stack"]] == ["data", "inner"]  # the bench's view
    alone = pyro.poutine.trace(program.model_module.model).get_trace(torch.randn(5, 4))
    assert [f.name for f in alone.nodes["z"]["cond_indep_stack"]] == ["batch", "inner"]  # the program as written


class TwoPlates(nn.Module):
    """Two plates over the batch, ``first`` and ``second``: which one is the data plate is for the user to say."""

    def __init__(self, first: str = "cells", second: str = "genes"):
        super().__init__()
        self.first, self.second = first, second
        self.enc = nn.Linear(4, 1)

    def model(self, x):
        with pyro.plate(self.first, x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate(self.second, x.shape[0], dim=-1):
            pyro.sample("x", dist.Normal(x.new_zeros(4), 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate(self.first, x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(self.enc(x).squeeze(-1), 1.0))


def test_an_ambiguous_or_wrongly_named_data_plate_is_refused_with_what_to_rename():
    # a batch of 3 rows beside a plate of 3: the trial's two batch sizes tell them apart
    assert find_data_plate(Plates("batch").model, Plates("batch").guide, torch.randn(3, 4)) == "batch"
    with pytest.raises(UserError, match=r"^prog.py:make: .*the plates 'cells', 'genes' all have the batch's size; "):
        _trial(TwoPlates())
    with pytest.raises(UserError, match=r"the plate over the batch is 'batch' and another plate is named 'data'"):
        _trial(Plates("batch", inner_name="data"))
    with pytest.raises(UserError, match=r"--data-plate 'cells' names no plate of the programs \(their plates: "):
        _trial(Plates("batch"), named="cells")
    assert _trial(Plates("batch"), named="batch").data_plate == "batch"


def test_the_sbc_skip_reason_says_which_need_failed(tmp_path):
    from ppl_vae.diagnostics.sbc import SBCSkipped, simulation_based_calibration

    class NoLatent(nn.Module):
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(1), obs=x)

        def guide(self, x):
            pass

    class Shifted(nn.Module):  # its observed site holds a function of x, not x
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("sq", dist.Normal(z.sum(-1, keepdim=True).expand(x.shape), 1.0).to_event(1), obs=x + 1)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x[..., :2], 1.0).to_event(1))

    none = simulation_based_calibration(NoLatent().model, NoLatent().guide, 4, 10, 5)
    assert isinstance(none, SBCSkipped) and none.reason.startswith("no latent site")
    squared = simulation_based_calibration(Shifted().model, Shifted().guide, 4, 10, 5)
    assert isinstance(squared, SBCSkipped) and "no simulated x" in squared.reason and "'sq'" in squared.reason
