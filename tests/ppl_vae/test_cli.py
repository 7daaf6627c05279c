"""The command line end to end, and its one-line errors that change nothing on disk."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppl_vae.cli import main

FAST = ["--epochs", "1", "--hidden-dim", "32", "--no-progress"]


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["fit", "--out", str(out), *FAST]) == 0
    return out


def test_fit_writes_every_output(trained_run):
    for name in [
        "config.toml",
        "metrics.json",
        "history.csv",
        "report.md",
        "report.html",
        "figures/elbo.png",
        "figures/reconstructions.png",
        "figures/samples.png",
        "checkpoint/state.json",
    ]:
        assert (trained_run / name).is_file(), name
    import json

    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"train_objective", "test_elbo", "epochs", "seconds", "sigma"} <= set(metrics)
    assert metrics["epochs"] == 1 and metrics["sigma"] == 0.1
    report = (trained_run / "report.md").read_text()
    assert "figures/reconstructions.png" in report and "figures/samples.png" in report


def test_sample_command(trained_run, tmp_path):
    out = tmp_path / "samples.png"
    assert main(["sample", str(trained_run), "--n", "16", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_entry_point_and_console_script(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ppl_vae", "fit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--sigma" in result.stdout
    script = Path(sys.executable).parent / "ppl-vae"
    assert script.is_file(), "the ppl-vae console script is installed"


@pytest.fixture
def bad_files(tmp_path):
    nan = np.random.rand(20, 4).astype(np.float32)
    nan[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "flat.npy", np.random.rand(20).astype(np.float32))
    return tmp_path


BAD = {
    "sigma zero": (["--sigma", "0"], "sigma"),
    "sigma negative": (["--sigma", "-0.5"], "sigma"),
    "unknown data": (["--data", "nonsense"], "unknown data set"),
    "nan file": (["--data", "{tmp}/nan.npy"], "NaN"),
    "1-D array": (["--data", "{tmp}/flat.npy"], "shape"),
    "unknown guide": (["--guide", "nope"], "unknown guide"),
    "bernoulli outside [0,1]": (["--data", "{tmp}/big.npy", "--likelihood", "bernoulli"], "supports"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, bad_files, trained_run, capsys):
    np.save(bad_files / "big.npy", np.random.rand(20, 4).astype(np.float32) * 5)
    args, message = BAD[case]
    args = [a.format(tmp=bad_files) for a in args]
    before = snapshot(trained_run)
    out = bad_files / "new-run"
    code = main(["fit", "--out", str(out), *FAST, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
    assert snapshot(trained_run) == before


def test_existing_run_is_not_overwritten(trained_run, capsys):
    before = snapshot(trained_run)
    assert main(["fit", "--out", str(trained_run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert snapshot(trained_run) == before


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--out", "{tmp}/x", "--sigma", "-1"],
        ["fit", "--out", "{tmp}/x", "--epochs", "many"],
        ["sample", "{tmp}/missing-run", "--out", "{tmp}/s.png"],
    ],
)
def test_subprocess_errors_have_no_traceback(args, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-m", "ppl_vae", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "x").exists()


def test_flat_vectors_of_any_length_train_and_plot(tmp_path):
    np.save(tmp_path / "flat.npy", np.random.rand(60, 7).astype(np.float32))
    out = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "flat.npy"), "--out", str(out), *FAST]) == 0
    assert (out / "figures" / "reconstructions.png").is_file()
