"""The defect list of the programs issue end to end: each case works, or is refused in one line, nothing written."""

import json
from pathlib import Path

import pytest

from ppl_vae.cli import main
from tests.ppl_vae.test_cli import snapshot

ROOT = Path(__file__).resolve().parents[2]
M2 = f"{ROOT}/examples/ss_vae_m2.py:m2_small"
DEFECTS = f"{ROOT}/tests/ppl_vae/defects.py"
FAST = ["--epochs", "1", "--limit", "300", "--latent-dim", "3", "--no-progress"]
EVAL = "--k 8 --points 40 --gap-points 6 --gap-steps 5 --sbc-simulations 30 --idata-points 10 --idata-draws 3".split()
EVAL.append("--no-progress")


def fit_and_evaluate(out: Path, *args, evaluate=EVAL) -> dict:
    assert main(["fit", "--out", str(out), *FAST, *args]) == 0
    assert main(["evaluate", str(out), "--trust-program", *evaluate]) == 0
    return json.loads((out / "evaluation" / "evaluation.json").read_text())


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m2") / "run"
    assert main(["fit", "--out", str(out), *FAST, "--model", M2, "--labels", "100", "--elbo", "traceenum"]) == 0
    return out


def test_semi_supervised_m2_trains_with_labels_and_evaluates_with_gaps_and_sbc(m2_run):
    assert main(["evaluate", str(m2_run), "--trust-program", *EVAL]) == 0
    result = json.loads((m2_run / "evaluation" / "evaluation.json").read_text())
    assert 0.0 <= result["accuracy"] <= 1.0 and result["inputs"] == []
    assert result["gap_sites"] == {
        "y": "free OneHotCategorical logits per datapoint, summed out exactly",
        "z": "Normal per datapoint",
    }
    assert result["sbc_pvalue"] is not None and result["log_px"] >= result["elbo"]
    assert json.loads((m2_run / "metrics.json").read_text())["n_labelled"] == 100
    assert (m2_run / "figures" / "samples_by_class.png").is_file()


def test_gaps_and_sbc_can_be_skipped(m2_run):
    skip = "--k 4 --points 20 --gap-points 0 --sbc-simulations 0 --idata-points 5 --idata-draws 2 --no-progress".split()
    assert main(["evaluate", str(m2_run), "--trust-program", *skip]) == 0
    result = json.loads((m2_run / "evaluation" / "evaluation.json").read_text())
    assert result["approximation_gap"] is None and result["gaps_skipped"] == "--gap-points 0"
    assert result["sbc_pvalue"] is None and result["sbc_skipped"] == "--sbc-simulations 0"


def test_deterministic_two_observed_sites_and_obs_mask_work_through_evaluate(tmp_path):
    result = fit_and_evaluate(tmp_path / "extras", "--model", f"{DEFECTS}:extras")
    assert set(result["distortion_by_site"]) == {"x", "rest_observed"}
    assert set(result["mse_by_site"]) == {"x", "rest_observed"}
    assert result["elbo"] == pytest.approx(-result["distortion"] - result["kl"], rel=1e-6)


def test_pyro_module_idiom_trains(tmp_path):
    assert main(["fit", "--out", str(tmp_path / "pm"), *FAST, "--model", f"{DEFECTS}:pyro_module_idiom"]) == 0


REFUSED = {
    "M2 sampled, trace": (
        [f"{DEFECTS}:sampled_m2", "--elbo", "trace"],
        "guide site 'y' is discrete and not enumerated",
    ),
    "M2, iwae": ([M2, "--elbo", "iwae"], "q(y|x) cancels and gets no gradient; use --elbo traceenum"),
    "M2, meanfield": ([M2, "--elbo", "meanfield"], "which the meanfield ELBO ignores"),
    "M2, trace": ([M2, "--elbo", "trace"], "which the trace ELBO ignores"),
    "M2 sampled, iwae": ([f"{DEFECTS}:sampled_m2", "--elbo", "iwae"], "would train it on no gradient"),
    "no particle broadcast": ([f"{DEFECTS}:no_broadcast"], "K = 2 particles in one pass"),
    "labels, no y": ([f"{DEFECTS}:extras", "--labels", "50"], "take no input y, so labels would be ignored"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_in_one_line_before_anything_is_written(case, tmp_path, capsys):
    args, message = REFUSED[case]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("untouched")
    before = snapshot(tmp_path)
    code = main(["fit", "--out", str(tmp_path / "run"), *FAST, "--model", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists() and snapshot(tmp_path) == before
