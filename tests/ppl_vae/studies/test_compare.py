"""Comparisons on equal terms: paired standard errors, held-out ranking, resumability."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.config import EvalConfig
from ppl_vae.diagnostics.statistics import paired_difference
from ppl_vae.errors import UserError
from ppl_vae.studies.compare import compare, parse_grid, variants_from
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[3]
SMALL = EvalConfig(k=20, points=40, gap_points=5, gap_steps=20, sbc_simulations=50, idata_points=10, idata_draws=3)
BUDGET = [
    "--epochs",
    "2",
    "--hidden-dim",
    "32",
    "--k",
    "20",
    "--points",
    "40",
    "--gap-points",
    "5",
    "--sbc-simulations",
    "50",
    "--no-progress",
]


def test_paired_se_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([0.5, 2.5, 2.0, 3.0])
    d = a - b  # 0.5, -0.5, 1.0, 1.0
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(0.5)
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in d) / 3)
    assert se == pytest.approx(sd / 2)
    # pairing removes what the variants share: shared per-point difficulty cancels
    hard = np.array([0.0, -50.0, 10.0, -20.0])
    assert paired_difference(a + hard, b + hard) == pytest.approx((mean, se))


def test_grid_expands_every_combination():
    cells = parse_grid("guide=diagonal,iaf;prior=standard,vamp")
    assert cells == [
        {"guide": "diagonal", "prior": "standard"},
        {"guide": "diagonal", "prior": "vamp"},
        {"guide": "iaf", "prior": "standard"},
        {"guide": "iaf", "prior": "vamp"},
    ]
    variants = variants_from(tiny_config(), grid="guide=diagonal,iaf;model.sigma=0.1,0.2")
    assert variants["guide-iaf_model.sigma-0.2"].guide.name == "iaf"
    assert variants["guide-iaf_model.sigma-0.2"].model.sigma == 0.2
    for bad in ("guide", "nokey=1", "model.nope=1"):
        with pytest.raises(UserError):
            variants_from(tiny_config(), grid=bad)


def test_identical_variants_differ_by_exactly_zero(tmp_path, digits):
    variants = {"a": tiny_config(), "b": tiny_config()}
    comparison = compare(variants, tmp_path, SMALL, data=digits, progress=False)
    rows = {r["variant"]: r for r in comparison.rows}
    assert rows["a"]["log_px"] == rows["b"]["log_px"]
    for r in rows.values():
        assert r["diff_to_best"] == 0.0 and r["diff_se"] == 0.0


def test_ranking_uses_held_out_points(tmp_path, digits):
    variants = {"small": tiny_config(model={"latent_dim": 2}), "large": tiny_config(model={"latent_dim": 8})}
    comparison = compare(variants, tmp_path, SMALL, data=digits, progress=False)
    assert [r["rank"] for r in comparison.rows] == [1, 2]
    assert comparison.rows[0]["log_px"] >= comparison.rows[1]["log_px"]
    for row in comparison.rows:
        run = ppl_vae.load(tmp_path / "runs" / row["variant"])
        # the ranked numbers are the test split's: recompute log p(x) on those points
        from ppl_vae.diagnostics.estimators import importance_sample

        assert row["n_points"] == SMALL.points
        pointwise = np.load(tmp_path / "runs" / row["variant"] / "evaluation" / "pointwise.npz")["log_px"]
        assert row["log_px"] == pytest.approx(pointwise.mean())
        est = importance_sample(run.program.model, run.program.guide, digits.test[: SMALL.points], k=200)
        assert abs(est.log_px.mean().item() - row["log_px"]) < 3 * row["log_px_se"] + 1.0
        train_est = importance_sample(run.program.model, run.program.guide, digits.train[: SMALL.points], k=20)
        assert not np.allclose(train_est.log_px.numpy(), pointwise)
    for name in (
        "comparison.csv",
        "comparison.json",
        "comparison.md",
        "figures/elpd_compare.png",
        "figures/rate_distortion.png",
        "figures/khat.png",
        "figures/reconstructions.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert "Δ to best" in comparison.to_markdown()
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"][0]["variant"] == comparison.rows[0]["variant"]


def _table(path: Path) -> list[dict]:
    rows = json.loads((path / "comparison.json").read_text())["rows"]
    for r in rows:
        r.pop("train_seconds")  # wall-clock time is the one number that may differ
    return rows


def test_interrupted_comparison_retrains_only_unfinished(tmp_path):
    study = ["compare", "--grid", "latent_dim=2,3", *BUDGET]
    args = [sys.executable, "-m", "ppl_vae", *study]
    reference = tmp_path / "reference"
    assert main([*study, "--out", str(reference)]) == 0  # the same command in this process

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first = out / "runs" / "latent_dim-2" / "evaluation" / "settings.json"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the first variant finished before the kill"
    assert not (out / "comparison.json").exists()
    finished = (out / "runs" / "latent_dim-2" / "checkpoint" / "state.json").read_bytes()

    assert main([*study, "--out", str(out)]) == 0
    assert (out / "runs" / "latent_dim-2" / "checkpoint" / "state.json").read_bytes() == finished  # not retrained
    assert _table(out) == _table(reference)


def test_seeds_live_in_the_folders_the_comparison_names(tmp_path, digits):
    """Variant ``a`` with two seeds is stored in runs/a/seed-0 and runs/a/seed-1, as its rows say."""
    comparison = compare({"a": tiny_config(train={"epochs": 1})}, tmp_path, SMALL, seeds=2, data=digits, progress=False)
    for s in (0, 1):
        assert (tmp_path / "runs" / "a" / f"seed-{s}" / "evaluation" / "evaluation.json").is_file()
    assert not list((tmp_path / "runs").glob("a_seed-*"))
    (row,) = comparison.rows
    assert row["seeds"] == 2 and row["log_px_seed_sd"] > 0


def test_seeded_comparison_concludes_on_the_larger_of_paired_se_and_seed_sd(tmp_path, digits):
    """Each Δ's seed SD is the spread of the per-seed paired means; the conclusion weighs the larger uncertainty."""
    variants = {"small": tiny_config(model={"latent_dim": 2}), "large": tiny_config(model={"latent_dim": 8})}
    small = EvalConfig(k=20, points=40, gap_points=0, sbc_simulations=0, idata_points=5, idata_draws=2)
    comparison = compare(variants, tmp_path, small, seeds=2, data=digits, progress=False)
    best, other = comparison.rows
    log_px = {
        r["variant"]: [
            np.load(tmp_path / "runs" / r["variant"] / f"seed-{s}" / "evaluation" / "pointwise.npz")["log_px"]
            for s in (0, 1)
        ]
        for r in comparison.rows
    }
    per_seed = [np.mean(log_px[best["variant"]][s] - log_px[other["variant"]][s]) for s in (0, 1)]
    assert other["diff_seed_sd"] == pytest.approx(np.std(per_seed, ddof=1), rel=1e-9)
    assert other["diff_to_best"] == pytest.approx(np.mean(per_seed), rel=1e-9)  # seeds averaged point by point
    saved = json.loads((tmp_path / "comparison.json").read_text())
    (versus,) = saved["conclusion"]["versus"]
    assert saved["conclusion"]["best"] == best["variant"] and versus["variant"] == other["variant"]
    assert versus["uncertainty"] == pytest.approx(max(other["diff_se"], other["diff_seed_sd"]))
    assert versus["resolved"] == (other["diff_to_best"] > 2 * versus["uncertainty"])
    report = (tmp_path / "comparison.md").read_text()
    assert report.rstrip().endswith(saved["conclusion"]["sentence"]) and "Δ sd over seeds" in report
    assert set(saved["verdicts"]) == set(variants) and "khat" in saved["verdicts"]["small"]


GRID = ["compare", "--grid", "latent_dim=2,6", *BUDGET]


@pytest.fixture(scope="module")
def cli_comparison(tmp_path_factory):
    """``ppl-vae compare`` of two variants, as a user runs it."""

    out = tmp_path_factory.mktemp("cli-compare")
    assert main([*GRID, "--out", str(out)]) == 0
    return out


def test_az_compare_on_two_runs_reproduces_ppl_vae_compare(cli_comparison):
    """ArviZ sums over points: elpd_diff = N·Δ and dse = N·SE, to 1e-9, on the same test points."""
    import arviz as az

    rows = json.loads((cli_comparison / "comparison.json").read_text())["rows"]
    elpds = {r["variant"]: ppl_vae.load(cli_comparison / "runs" / r["variant"]).heldout_elpd() for r in rows}
    table = az.compare(elpds)  # the user's own call, with ArviZ's defaults
    assert list(table.index) == [r["variant"] for r in rows]
    best = np.load(cli_comparison / "runs" / rows[0]["variant"] / "evaluation" / "pointwise.npz")["log_px"]
    for r in rows:
        n = r["n_points"]
        assert n == SMALL.points and r["k"] == SMALL.k
        assert abs(table.loc[r["variant"], "elpd_diff"] - n * r["diff_to_best"]) < 1e-9
        assert abs(table.loc[r["variant"], "dse"] - n * r["diff_se"]) < 1e-9
        assert abs(table.loc[r["variant"], "elpd_loo"] - n * r["log_px"]) < 1e-9
        assert r["stacking_weight"] == pytest.approx(table.loc[r["variant"], "weight"], abs=1e-4)
        # and by hand from the per-point values: the paired mean and its SE with ArviZ's ddof 0
        d = best - np.load(cli_comparison / "runs" / r["variant"] / "evaluation" / "pointwise.npz")["log_px"]
        assert abs(r["diff_to_best"] - d.mean()) < 1e-9
        assert abs(r["diff_se"] - d.std() / math.sqrt(n)) < 1e-9
    assert rows[1]["diff_to_best"] > 0 and rows[1]["diff_se"] > 0
    assert sum(r["stacking_weight"] for r in rows) == pytest.approx(1.0, abs=1e-6)
    report = (cli_comparison / "comparison.md").read_text()
    assert "figures/elpd_compare.png" in report and "optimistic" in report
    concluded = json.loads((cli_comparison / "comparison.json").read_text())["conclusion"]
    assert concluded["best"] == rows[0]["variant"] and concluded["versus"][0]["basis"] == "paired SE"
    assert concluded["versus"][0]["z"] == pytest.approx(rows[1]["diff_to_best"] / rows[1]["diff_se"])
    assert "## Conclusion" in report and concluded["sentence"] in report
    assert (cli_comparison / "figures" / "elpd_compare.png").is_file()


@pytest.mark.parametrize(
    "evaluate, refusal",
    [(["--k", "30", "--points", "40"], "K=30"), (["--k", "20", "--points", "30"], "different test points")],
)
def test_a_run_evaluated_by_hand_is_evaluated_again_at_the_studys_settings(
    cli_comparison, tmp_path, capsys, evaluate, refusal
):
    """A variant re-evaluated by hand at other settings is evaluated again by the next compare (its plan is
    ``evaluate``), so the comparison stays on the same points and K, with the same numbers (the evaluation is
    seeded); the elpds of the hand evaluation and of another run are refused by the comparability check."""
    import shutil

    from ppl_vae.diagnostics.elpd import check_comparable
    from ppl_vae.runs.evaluation import read_heldout_elpd

    out = tmp_path / "compare"
    shutil.copytree(cli_comparison, out)
    before = json.loads((out / "comparison.json").read_text())
    rest = ["--gap-points", "5", "--sbc-simulations", "50", "--no-progress"]
    assert main(["evaluate", str(out / "runs" / "latent_dim-6"), *evaluate, *rest]) == 0
    by_hand = read_heldout_elpd(out / "runs" / "latent_dim-6")
    with pytest.raises(UserError, match=refusal) as refused:
        check_comparable({"latent_dim-2": read_heldout_elpd(out / "runs" / "latent_dim-2"), "latent_dim-6": by_hand})
    assert "\n" not in str(refused.value)
    capsys.readouterr()
    assert main([*GRID, "--out", str(out)]) == 0
    after = json.loads((out / "comparison.json").read_text())
    assert after["rows"] == before["rows"]


def test_how_the_sampler_runs_does_not_make_a_study_evaluate_again(cli_comparison, tmp_path):
    """Compiled or eager, the sampler gives the same numbers: --no-compile-sampler reuses every evaluation."""
    import shutil

    out = tmp_path / "compare"
    shutil.copytree(cli_comparison, out)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/evaluation/evaluation.json")}
    assert len(stamps) == 2
    assert main([*GRID, "--out", str(out), "--no-compile-sampler"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/evaluation/evaluation.json")} == stamps


TINY = EvalConfig(k=5, points=20, gap_points=0, sbc_simulations=0, idata_points=5, idata_draws=2)


@pytest.fixture(scope="module")
def called_back(tmp_path_factory):
    """A two-variant study with a callback, its log lines and what the callback saw."""
    import logging

    from ppl_vae.config import DataConfig
    from ppl_vae.data.datasets import load_data

    out, seen = tmp_path_factory.mktemp("called") / "study", []
    variants = {"a": tiny_config(), "b": tiny_config(model={"latent_dim": 3})}
    handler = _Lines()
    logging.getLogger("ppl_vae").addHandler(handler)
    level = logging.getLogger("ppl_vae").level
    logging.getLogger("ppl_vae").setLevel(logging.INFO)
    try:
        compare(
            variants,
            out,
            TINY,
            data=load_data(DataConfig()),
            progress=False,
            callbacks=[lambda variant, epoch, row: seen.append((variant, epoch, row))],
        )
    finally:
        logging.getLogger("ppl_vae").removeHandler(handler)
        logging.getLogger("ppl_vae").setLevel(level)
    return out, variants, seen, handler.lines


class _Lines:
    """A logging handler that keeps the messages."""

    level = 0

    def __init__(self):
        self.lines = []

    def handle(self, record):
        self.lines.append(record.getMessage())


def test_compare_calls_back_once_per_epoch_of_every_variant(called_back, digits):
    import csv

    out, variants, seen, lines = called_back
    assert sorted((v, e) for v, e, _ in seen) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    for variant in variants:
        with open(out / "runs" / variant / "history.csv") as f:
            history = [float(r["test_elbo"]) for r in csv.DictReader(f)]
        assert [row["test_elbo"] for v, _, row in seen if v == variant] == pytest.approx(history, rel=1e-12)
    # without bars, a plain line as each variant begins and ends, and the trainer's epoch lines between
    begun = [line for line in lines if line.startswith("variant ") and ": training" in line]
    ended = [line for line in lines if line.startswith("variant ") and " done (" in line]
    assert begun == ["variant 1/2 a: training", "variant 2/2 b: training"]
    assert ended == ["variant a done (1/2)", "variant b done (2/2)"]
    assert sum(line.startswith("epoch ") for line in lines) == 4
    more = []  # a study continued with nothing left to train calls nothing
    compare(variants, out, TINY, data=digits, progress=False, callbacks=[lambda *a: more.append(a)])
    assert more == []


def test_every_table_carries_its_schema_and_a_newer_one_is_refused(called_back, tmp_path, digits):
    import shutil

    from ppl_vae.storage.schema import SCHEMA, NewerSchema

    study, variants = tmp_path / "study", called_back[1]
    shutil.copytree(called_back[0], study)
    tables = [p for p in study.rglob("*.json") if p.parent.name != "checkpoint"]  # state.json has its own version
    names = {p.relative_to(study).as_posix() for p in tables}
    assert {"comparison.json", "ppl_vae-study.json", "runs/a/metrics.json"} <= names
    assert {"runs/a/evaluation/evaluation.json", "runs/a/evaluation/settings.json"} <= names
    assert all(json.loads(p.read_text())["schema"] == SCHEMA for p in tables)

    def newer(path: Path) -> None:
        path.write_text(json.dumps({**json.loads(path.read_text()), "schema": SCHEMA + 1}))

    newer(study / "runs" / "a" / "metrics.json")
    with pytest.raises(NewerSchema, match=rf"metrics.json \(metrics file\) has schema {SCHEMA + 1}, newer"):
        ppl_vae.load(study / "runs" / "a")
    newer(study / "runs" / "b" / "evaluation" / "evaluation.json")
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    for path in (study / "ppl_vae-study.json", None):
        with pytest.raises(NewerSchema) as refused:  # not trained over, nor evaluated again
            compare(variants, study, TINY, data=digits, progress=False)
        assert "\n" not in str(refused.value) and "pip install -U ppl_vae" in str(refused.value)
        assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file() and p.name != ".lock"} == {
            p: b for p, b in before.items() if p.name != ".lock"
        }
        if path is not None:
            newer(path)
            before[path] = path.read_bytes()
