"""--tensorboard and --mlflow: what a run logs is what its history.csv and folders hold."""

import csv
import sys
from pathlib import Path

import pytest

from ppl_vae.cli import main

FAST = ["--epochs", "2", "--hidden-dim", "32", "--no-progress"]


def history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One run logged to both: TensorBoard in tb/, MLflow in a local file store."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens a folder store only when asked to
        env.setenv("MLFLOW_EXPERIMENT_NAME", "digits")
        code = main(["fit", "--out", str(root / "run"), *FAST, "--tensorboard", str(root / "tb"), "--mlflow"])
    assert code == 0
    return root


def test_tensorboard_scalars_are_the_history(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = history(tracked / "run")
    tags = events.Tags()
    for column, tag in (("test_elbo", "elbo/test"), ("train_objective", "objective/train"), ("beta", "schedule/beta")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [int(r["epoch"]) for r in rows]
        assert [e.value for e in logged] == pytest.approx([r[column] for r in rows], rel=1e-6)  # float32 in the file
    assert {"figures/elbo", "figures/reconstructions", "figures/samples"} <= set(tags["images"])
    assert list(Path(tracked / "tb").glob("events.out.tfevents.*"))


def test_mlflow_records_params_metric_history_and_artifacts(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.hidden_dim"] == "32" and params["train.epochs"] == "2" and params["model.sigma"] == "0.1"
    rows = history(tracked / "run")
    for column in ("test_elbo", "train_objective", "beta"):
        logged = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
        assert [(m.step, m.value) for m in logged] == [(int(r["epoch"]), r[column]) for r in rows]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.html", "history.csv", "figures"} <= artifacts
    assert "figures/elbo.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}


def test_a_study_logs_one_folder_per_variant(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ppl_vae.runs.tracking import PerVariant, TensorBoard

    study = PerVariant(TensorBoard(tmp_path))
    for variant in ("a", "b/seed-1"):
        for epoch in (1, 2):
            study(variant, epoch, {"epoch": epoch, "test_elbo": -float(epoch), "kl_term": 2.0 * epoch})
    study.variant("a").close()
    study.variant("b/seed-1").close()
    events = EventAccumulator(str(tmp_path / "b" / "seed-1"))
    events.Reload()
    assert [e.value for e in events.Scalars("elbo/test")] == [-1.0, -2.0]
    assert [e.value for e in events.Scalars("terms/kl_term")] == [2.0, 4.0]  # an ELBO term a history carries


@pytest.mark.parametrize(
    "flag, module, extra",
    [("--tensorboard", "torch.utils.tensorboard", "ppl_vae[tensorboard]"), ("--mlflow", "mlflow", "ppl_vae[mlflow]")],
)
def test_a_missing_package_is_one_line_naming_its_extra(flag, module, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    args = [flag, str(tmp_path / "tb")] if flag == "--tensorboard" else [flag]
    assert main(["fit", "--out", str(tmp_path / "run"), *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"pip install '{extra}'" in err, err
    assert not (tmp_path / "run").exists()


def test_an_mlflow_store_that_cannot_open_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    assert main(["fit", "--out", str(tmp_path / "run"), *FAST, "--mlflow"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--mlflow: cannot use the tracking store" in err, err
    assert not (tmp_path / "run").exists()
