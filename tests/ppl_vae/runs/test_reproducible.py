"""Same command, same numbers: the step a run takes, its name on disk, and the versions that made it."""

import csv
import json

import pytest

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.errors import CheckpointError
from ppl_vae.inference import compiled
from ppl_vae.storage.checkpoint import read_state, state_digest

FIT = ["--epochs", "2", "--limit", "256", "--batch-size", "128", "--hidden-dim", "16", "--no-progress"]
EVALUATE = ["--k", "20", "--points", "40", "--gap-points", "4", "--gap-steps", "2", "--sbc-simulations", "10"]
FLAGS = {"eager": ["--no-compile"], "replayed": [], "compiled": ["--compile"]}


@pytest.mark.parametrize("kind", ["eager", "replayed", "compiled"])
def test_load_names_the_step_that_metrics_json_records(kind, tmp_path, monkeypatch):
    """One vocabulary: what fit wrote into metrics.json is what load reads from the checkpoint, for every kind."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(compiled, "REPLAY_STEPS", 2)  # so that auto replays a run of 4 steps
    out = tmp_path / kind
    assert main(["fit", "--out", str(out), *FIT, *FLAGS[kind]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == kind
    assert read_state(out / "checkpoint")["extra"]["step_kind"] == kind  # the checkpoint's own record, too
    assert ppl_vae.load(out).step_kind == kind


@pytest.mark.parametrize("stored,kind", [("off", "eager"), ("replay", "replayed"), ("on", "compiled")])
def test_a_checkpoint_with_the_old_names_loads_and_resumes_in_the_new_vocabulary(stored, kind, tmp_path):
    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), *FIT, "--no-compile"]) == 0
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state["extra"]["step_kind"] = stored  # what a checkpoint written before the kinds had one vocabulary holds
    state["sha256"] = state_digest(state)
    path.write_text(json.dumps(state))
    assert ppl_vae.load(out).step_kind == kind
    state["extra"]["step_kind"] = "fast"
    state["sha256"] = state_digest(state)
    path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="step_kind must be one of eager, replayed, compiled"):
        ppl_vae.load(out)


def _numbers(table: dict) -> dict:
    """Everything but the wall-clock seconds."""
    return {k: v for k, v in table.items() if k != "seconds"}


def test_the_same_command_gives_the_same_numbers(tmp_path):
    """fit and evaluate twice: metrics.json, history.csv and evaluation.json agree to the last bit (seconds aside)."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["fit", "--out", str(out), *FIT]) == 0
        assert main(["evaluate", str(out), *EVALUATE, "--no-progress"]) == 0
    metrics = [json.loads((out / "metrics.json").read_text()) for out in outs]
    assert _numbers(metrics[0]) == _numbers(metrics[1])
    assert metrics[0]["test_elbo"] != metrics[0]["first_epoch_test_elbo"]  # it trained: there are numbers to compare
    histories = [list(csv.DictReader((out / "history.csv").read_text().splitlines())) for out in outs]
    assert [_numbers(row) for row in histories[0]] == [_numbers(row) for row in histories[1]]
    evaluations = [json.loads((out / "evaluation" / "evaluation.json").read_text()) for out in outs]
    assert _numbers(evaluations[0]) == _numbers(evaluations[1])
    assert evaluations[0]["log_px"] == evaluations[1]["log_px"] and evaluations[0]["log_px"] < 0


def test_the_versions_that_produced_the_numbers_are_recorded_and_reported(tmp_path):
    import arviz
    import pyro
    import torch

    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), *FIT]) == 0
    assert main(["evaluate", str(out), *EVALUATE, "--no-progress"]) == 0
    want = {"torch": torch.__version__, "pyro-ppl": pyro.__version__, "arviz": arviz.__version__}
    want["ppl_vae"] = ppl_vae.__version__
    metrics = json.loads((out / "metrics.json").read_text())
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert metrics["versions"] == want and evaluation["versions"] == want
    assert ppl_vae.load(out).metrics["versions"] == want  # read back through metrics.json's checks
    (row,) = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| versions |")]
    assert all(f"{name} {version}" in row for name, version in want.items())  # in the report's summary
    for bad in ({"torch": 2}, ["torch"]):  # read_metrics checks the table as it checks every field
        (out / "metrics.json").write_text(json.dumps({**metrics, "versions": bad}))
        with pytest.raises(CheckpointError, match="'versions' must"):
            ppl_vae.load(out)
