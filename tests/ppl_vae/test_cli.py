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


# --- a conventional command line: fast help, choices, --version, near misses, -q, logging ------------------------


def _seconds(code: str, runs: int) -> tuple[float, str]:
    """The shortest wall time of ``python -c code`` over ``runs`` runs (the first warms the file cache), and
    what the last one printed."""
    import time

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times), result.stdout


def test_help_answers_without_paying_for_torch():
    """``ppl-vae fit --help`` builds its parser from the config alone: torch is never imported, and the help
    takes well under the time of importing torch (its shortest of two runs against one import, ten-fold apart)."""
    code = "import sys; from ppl_vae.cli import main; sys.argv = ['ppl-vae', 'fit', '--help']\n"
    code += "try:\n    main()\nfinally:\n    print('torch imported' if 'torch' in sys.modules else 'no torch')"
    help_, printed = _seconds(code, runs=2)
    assert "--latent-dim" in printed and printed.rstrip().endswith("no torch"), printed[-200:]
    torch, _ = _seconds("import torch", runs=1)
    assert help_ < 0.5 * torch, (help_, torch)


def test_version_and_choices_in_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("ppl-vae ")
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import PRIORS

    assert f"one of: {', '.join(GUIDES)}" in text and f"one of: {', '.join(PRIORS)}" in text
    assert "--latent-dim N" in text and "--sigma FLOAT" in text and "MODEL.LATENT_DIM" not in text
    assert "--no-compile the same as --compile off" in text


@pytest.mark.parametrize(
    "args,hint",
    [
        (["fit", "--out", "x", "--epoch", "2"], "(did you mean --epochs?)"),
        (["fit", "--out", "x", "--guide", "diagonl"], "(did you mean 'diagonal'?)"),
        (["fit", "--out", "x", "--sigma", "-1"], "--sigma (model.sigma) must lie in"),
    ],
)
def test_a_near_miss_is_named_with_the_flag_the_user_typed(args, hint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own refusal
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and hint in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_quiet_and_a_redirected_stderr_get_no_bars_and_no_control_codes(tmp_path):
    """Redirected: no bars and no cursor codes, a plain line per epoch on stdout; with -q nothing but warnings."""
    for flags, expect_epochs in (([], True), (["-q"], False)):
        out = tmp_path / f"run{len(flags)}"
        result = subprocess.run(
            # no --no-progress: a redirected stderr alone turns the bars off
            [sys.executable, "-m", "ppl_vae", "fit", "--out", str(out), "--hidden-dim", "32", "--epochs", "2", *flags],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stderr and "\r" not in result.stderr
        assert result.stderr == ""  # stderr is for what went wrong; what the bench is doing goes to stdout
        epochs = [line for line in result.stdout.splitlines() if line.startswith("ppl-vae: epoch ")]
        assert len(epochs) == (2 if expect_epochs else 0), result.stderr
        assert all("objective" in line and "test ELBO" in line for line in epochs)


def test_the_bench_speaks_through_logging(tmp_path, caplog):
    """A library user routes the bench's lines with the standard logging module."""
    import logging

    import ppl_vae
    from tests.conftest import tiny_config

    with caplog.at_level(logging.INFO, logger="ppl_vae"):
        ppl_vae.fit(tiny_config(train={"epochs": 2}), tmp_path / "run", progress=False)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")][-1].startswith("epoch 2/2:")


def test_callbacks_are_called_once_per_epoch_with_its_row(tmp_path):
    import ppl_vae
    from tests.conftest import tiny_config

    seen = []
    run = ppl_vae.fit(
        tiny_config(train={"epochs": 3}),
        tmp_path / "run",
        progress=False,
        callbacks=[lambda e, row: seen.append((e, row))],
    )
    assert [e for e, _ in seen] == [1, 2, 3]
    assert [row["test_elbo"] for _, row in seen] == [row["test_elbo"] for row in run.history]
    more = []  # a resumed run calls them for the epochs it adds
    ppl_vae.fit(
        tiny_config(train={"epochs": 4}),
        tmp_path / "run",
        resume=True,
        progress=False,
        callbacks=[lambda e, r: more.append(e)],
    )
    assert more == [4]
