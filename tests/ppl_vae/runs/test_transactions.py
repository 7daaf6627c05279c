"""Writes are transactions: a run appears whole at its first checkpoint, an evaluation appears whole,
a failure leaves what was there, resume changes only what it says, and a study names runs exactly."""

import csv
import errno
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.storage.checkpoint import read_state
from tests.ppl_vae.test_adversarial import cli, program

FAST = ["--epochs", "1", "--hidden-dim", "16", "--no-progress"]
EVAL = ["--k", "8", "--points", "20", "--gap-points", "2", "--gap-steps", "2", "--sbc-simulations", "10"]
EVAL += ["--sbc-draws", "5", "--idata-points", "30", "--idata-draws", "8", "--no-progress"]


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A trained and evaluated run (copied by the tests that change it)."""
    run = tmp_path_factory.mktemp("transactions") / "run"
    assert main(["fit", "--out", str(run), *FAST]) == 0
    assert main(["evaluate", str(run), *EVAL]) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_a_new_run_takes_its_place_at_its_first_checkpoint(tmp_path, monkeypatch):
    from ppl_vae.runs import transaction

    out, seen = tmp_path / "run", []
    real = transaction.save_checkpoint

    def watch(directory, *args, **kwargs):
        staging = [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.staging-")]
        seen.append((out.exists(), len(staging), Path(directory).parent.name.startswith(".run.staging-")))
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(transaction, "save_checkpoint", watch)
    assert main(["fit", "--out", str(out), "--epochs", "2", "--hidden-dim", "16", "--no-progress"]) == 0
    assert seen[0] == (False, 1, True)  # the first checkpoint is written beside out, then swapped in
    assert seen[1] == (True, 0, False)  # later ones in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_fit_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    (tmp_path / "diverges.py").write_text(
        "import torch\n"
        + program(model_extra="z = z + self.t * (1.0 if float(self.t.detach()) == 0.5 else float('nan'))").replace(
            "super().__init__()", "super().__init__()\n        self.t = torch.nn.Parameter(torch.tensor(0.5))"
        )
    )
    before = snapshot(tmp_path)
    code, err = cli(["fit", "--model", f"{tmp_path}/diverges.py:make", "--out", f"{tmp_path}/a/b/run", *FAST])
    assert code == 2 and "step 2; training stopped before its first checkpoint: nothing was written" in err
    assert snapshot(tmp_path) == before  # no run, no staging directory, not even the folders a/b


def test_the_next_writer_removes_what_a_killed_one_left(tmp_path):
    leftovers = [tmp_path / ".run.staging-0123456789ab", tmp_path / ".run.old-0123456789ab"]
    for d in leftovers:
        (d / "checkpoint").mkdir(parents=True)
    (tmp_path / ".other.staging-0123456789ab").mkdir()
    assert main(["fit", "--out", str(tmp_path / "run"), *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.staging-0123456789ab", "run"]


def test_overwrite_replaces_a_run_whole(evaluated, tmp_path):
    run = _copy(evaluated, tmp_path)
    assert (run / "evaluation").is_dir()
    assert main(["fit", "--out", str(run), "--overwrite", "--seed", "7", *FAST]) == 0
    assert read_state(run / "checkpoint")["config"]["train"]["seed"] == 7
    assert not (run / "evaluation").exists()  # the old run's evaluation went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resuming_a_finished_run_says_so_and_changes_nothing(evaluated, capsys):
    before = snapshot(evaluated)
    assert main(["fit", "--resume", str(evaluated), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "has already trained its 1 epochs; nothing to do" in out and "--epochs N" in out
    assert main(["fit", "--resume", str(evaluated), "--epochs", "1", "--no-progress"]) == 0
    assert snapshot(evaluated) == before


def test_resume_with_more_epochs_is_the_run_trained_that_long(tmp_path):
    """Extending a 1-epoch run to 2 ends bit for bit where a 2-epoch run ends; history keeps its columns."""
    args = ["--hidden-dim", "16", "--no-progress", "--lr-schedule", "constant"]
    assert main(["fit", "--out", str(tmp_path / "two"), "--epochs", "2", *args]) == 0
    assert main(["fit", "--out", str(tmp_path / "one"), "--epochs", "1", *args]) == 0
    with open(tmp_path / "one" / "history.csv") as f:
        columns = next(csv.reader(f))
    assert main(["fit", "--resume", str(tmp_path / "one"), "--epochs", "2", "--no-progress"]) == 0
    a, b = (load_file(str(next((tmp_path / n / "checkpoint").glob("weights-*")))) for n in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "one" / "history.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == columns == ["epoch", "train_objective", "test_elbo", "beta", "seconds"] and len(rows) == 3
    assert "epochs = 2" in (tmp_path / "one" / "config.toml").read_text()


def test_evaluate_writes_one_unit_recording_its_settings_and_data(evaluated, tmp_path):
    run = evaluated
    ev = run / "evaluation"
    assert sorted(p.name for p in ev.iterdir()) == [
        "evaluation.json",
        "figures",
        "inference_data.nc",
        "pointwise.npz",
        "settings.json",
    ]
    settings = json.loads((ev / "settings.json").read_text())
    assert settings["evaluate"]["k"] == 8 and settings["evaluate"]["points"] == 20
    assert settings["data"] == {"name": "digits", "split": "test"}
    assert settings["checkpoint"] == {"epoch": 1, "step": read_state(run / "checkpoint")["step"]}
    test = ppl_vae.load(run).dataset().test[:20].contiguous()
    assert settings["points"] == {"n": 20, "sha256": hashlib.sha256(test.numpy().tobytes()).hexdigest()}
    report = (run / "report.md").read_text()
    for name in ("khat.png", "sbc.png", "ppc.png"):
        assert f"](evaluation/figures/{name})" in report and (ev / "figures" / name).is_file()
    assert not list(run.glob("*.png")) and not (run / "evaluation.json").exists()


def test_evaluate_on_other_data_says_which(evaluated, tmp_path):
    run = _copy(evaluated, tmp_path)
    np.save(tmp_path / "other.npy", np.random.default_rng(0).random((50, 64)).astype(np.float32))
    assert main(["evaluate", str(run), *EVAL, "--data", str(tmp_path / "other.npy")]) == 0
    settings = json.loads((run / "evaluation" / "settings.json").read_text())
    assert settings["data"] == {"name": str(tmp_path / "other.npy"), "split": "given"}
    assert "Evaluated on `" + str(tmp_path / "other.npy") in (run / "report.md").read_text()


def test_evaluate_removes_its_own_leftovers(evaluated, tmp_path):
    run = _copy(evaluated, tmp_path)
    (run / ".evaluation.staging-0123456789ab" / "figures").mkdir(parents=True)
    (run / "evaluation" / ".evaluation.json.tmp-0123456789ab").write_text("half")
    (run / ".report.md.tmp-0123456789ab").write_text("half")
    assert main(["evaluate", str(run), *EVAL, "--eval-seed", "1"]) == 0
    hidden = [p for p in run.rglob(".*")]
    assert hidden == []


def test_a_full_disk_during_evaluate_keeps_the_previous_evaluation(evaluated, tmp_path, monkeypatch):
    run = _copy(evaluated, tmp_path)
    before = snapshot(run)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    code, err = cli(["evaluate", str(run), *EVAL, "--eval-seed", "1"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pointwise.npz: No space left on device; nothing was replaced" in err
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("command", ["evaluate", "sample", "compare"])
def test_sigterm_outside_training_is_one_line_and_leaves_nothing_half_written(
    command, evaluated, tmp_path, monkeypatch
):
    """SIGTERM while the work runs (the analysis, the decoding, a study's first fit)."""
    from ppl_vae.runs import evaluation
    from ppl_vae.runs.run import Run
    from ppl_vae.studies import runner

    run = _copy(evaluated, tmp_path)
    before = snapshot(tmp_path)

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal arrives before this line")

    target = {"evaluate": (evaluation, "evaluate"), "sample": (Run, "sample"), "compare": (runner, "fit")}[command]
    monkeypatch.setattr(*target, terminated)
    argv = {
        "evaluate": ["evaluate", str(run), *EVAL],
        "sample": ["sample", str(run), "--out", str(tmp_path / "s.png")],
        "compare": ["compare", "--grid", "latent_dim=2,3", *FAST, *EVAL, "--out", str(tmp_path / "study")],
    }[command]
    code, err = cli(argv)
    assert code == 143 and len(err.strip().splitlines()) == 1 and "terminated by signal 15" in err, err
    after = snapshot(tmp_path)
    if command == "compare":  # the study is marked and resumable; nothing else was written
        assert {k: v for k, v in after.items() if not k.startswith("study")} == before
        assert sorted(k for k in after if k.startswith("study")) == ["study", "study/ppl_vae-study.json"]
    else:
        assert after == before


def test_a_sweep_names_its_runs_by_exact_values(tmp_path):
    code, err = cli(["sigma-sweep", "--sigmas", "0.1,0.1000001", *FAST, *EVAL, "--out", str(tmp_path / "sweep")])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "sweep" / "runs").iterdir()) == ["sigma_0.1", "sigma_0.1000001"]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [r["sigma"] for r in rows] == [0.1, 0.1000001]
    table = (tmp_path / "sweep" / "sweep.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["0.1", "0.1000001"]
    assert json.loads((tmp_path / "sweep" / "ppl_vae-study.json").read_text())["kind"] == "sigma-sweep"


def test_resuming_a_finished_run_on_a_read_only_disk_is_a_no_op(evaluated, monkeypatch, capsys):
    """A finished run needs no lock: where none can be taken (a read-only disk), resume still says there is
    nothing to do, with exit 0, as the README promises."""
    from ppl_vae.errors import StorageError
    from ppl_vae.runs import resume

    def read_only(target, what="directory"):
        raise StorageError(f"cannot write into {Path(target).parent}: Read-only file system; nothing was replaced")

    monkeypatch.setattr(resume, "locked", read_only)
    before = snapshot(evaluated)
    assert main(["fit", "--resume", str(evaluated), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["fit", "--resume", str(evaluated), "--epochs", "2", "--no-progress"]) == 2  # more to train: refused
    assert "Read-only file system" in capsys.readouterr().err
    assert snapshot(evaluated) == before


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path):
    from ppl_vae.config import load_config

    (tmp_path / "bom.toml").write_bytes("\ufeff[model]\nsigma = 0.2\n".encode())
    assert load_config(tmp_path / "bom.toml").model.sigma == 0.2


DIVERGES = "import torch\n" + program(
    model_extra="z = z + self.t * (1.0 if float(self.t.detach()) == 0.5 else float('nan'))"
).replace("super().__init__()", "super().__init__()\n        self.t = torch.nn.Parameter(torch.tensor(0.5))")


def test_a_parallel_study_with_a_failing_variant_is_one_line_and_leaves_whole_runs(tmp_path):
    (tmp_path / "good.py").write_text(program())
    (tmp_path / "diverges.py").write_text(DIVERGES)
    grid = f"model.program={tmp_path}/good.py:make,{tmp_path}/diverges.py:make"
    study = tmp_path / "study"
    code, err = cli(["compare", "--jobs", "2", "--grid", grid, *FAST, *EVAL, "--out", str(study)])
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert "Traceback" not in err and "loss became" in line, line
    assert not [p for p in tmp_path.rglob(".*")], "a staging directory, temporary file or lock was left"
    runs = [state.parent.parent for state in study.rglob("checkpoint/state.json")]
    assert len(runs) <= 1 and all("good" in p.name for p in runs)  # the failing variant left nothing
    for run in runs:  # the other one is whole
        assert ppl_vae.load(run, trust_program=True).sample(2).shape == (2, 64)


STUDY = ["compare", "--grid", "latent_dim=2,3", "--epochs", "2", "--checkpoint-steps", "3", "--hidden-dim", "16"]
STUDY += ["--no-compile", *EVAL]


def _rows(study: Path) -> list[dict]:
    rows = json.loads((study / "comparison.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def test_two_studies_on_one_folder_and_a_study_killed_mid_write_then_rerun(tmp_path):
    """A second study of the same folder is refused in one line while the first writes; the first, killed
    with -9 once its runs are being written, is finished by a rerun equal to a study never interrupted."""
    import subprocess
    import sys
    import time

    assert cli([*STUDY, "--out", str(tmp_path / "reference")])[0] == 0

    study = tmp_path / "study"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppl_vae", *STUDY, "--out", str(study)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not list(study.glob("runs/*/checkpoint/state.json")) and proc.poll() is None:
            assert time.time() < deadline, "the study never wrote a run"
            time.sleep(0.02)
        before = snapshot(tmp_path / "reference")
        code, err = cli([*STUDY, "--out", str(study)])
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"being written by another ppl-vae process (pid {proc.pid})" in err
        assert snapshot(tmp_path / "reference") == before
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not (study / "comparison.json").exists(), "killed before the end"

    code, err = cli([*STUDY, "--out", str(study)])
    assert code == 0, err
    assert _rows(study) == _rows(tmp_path / "reference")
    assert not [p for p in tmp_path.rglob(".*")]
    for name in ("latent_dim-2", "latent_dim-3"):
        a, b = (
            load_file(str(next((d / "runs" / name / "checkpoint").glob("weights-*"))))
            for d in (tmp_path / "reference", study)
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
