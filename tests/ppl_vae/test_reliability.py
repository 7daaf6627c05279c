"""Crashes, signals and divergence: nothing is lost, and a resumed run is the run that was interrupted."""

import csv
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ppl_vae
from ppl_vae.storage.checkpoint import read_state

FIT = [sys.executable, "-m", "ppl_vae", "fit", "--hidden-dim", "32", "--no-progress"]


def _wait_for_step(run_dir: Path, step: int, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if read_state(run_dir / "checkpoint")["step"] >= step:
                return
        except Exception:  # noqa: BLE001 - not written yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {step} (process exit code {proc.poll()})")


def _weights(run_dir: Path) -> dict:
    state = read_state(run_dir / "checkpoint")
    return load_file(str(run_dir / "checkpoint" / state["files"]["weights"]["name"]))


def _numbers(run_dir: Path):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("seconds")  # wall-clock time is the one number that may differ
    with open(run_dir / "history.csv") as f:
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    return metrics, history


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, compiled):
    args = ["--epochs", "6", "--checkpoint-steps", "5", *(["--compile"] if compiled else [])]
    reference = tmp_path / "reference"
    subprocess.run([*FIT, *args, "--out", str(reference)], check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen([*FIT, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_step(run, 27, proc)  # mid-epoch: 12 steps an epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists(), "killed before the end"
    result = subprocess.run([*FIT[:4], "--resume", str(run), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    a, b = _weights(reference), _weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _numbers(run) == _numbers(reference)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*FIT, "--epochs", "500", "--checkpoint-every", "1000", "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (run / "config.toml").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # well into training, before any scheduled checkpoint
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    state = read_state(run / "checkpoint")
    assert state["step"] > 0
    loaded = ppl_vae.load(run)
    assert loaded.sample(4).shape == (4, 64)


NAN_PROGRAM = """
import pyro, pyro.distributions as dist, torch
from torch import nn

CALLS = [0]

class Exploding(nn.Module):
    def __init__(self, data_dim, latent_dim):
        super().__init__()
        self.dec = nn.Linear(latent_dim, data_dim)
        self.enc = nn.Linear(data_dim, 2 * latent_dim)

    def model(self, x):
        CALLS[0] += 1
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.dec.in_features), 1.0).to_event(1))
            loc = self.dec(z) * (float("nan") if CALLS[0] > 30 else 1.0)
            pyro.sample("x", dist.Normal(loc, 0.1, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

def make(data_dim, latent_dim):
    return Exploding(data_dim, latent_dim)
"""


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    program = tmp_path / "exploding.py"
    program.write_text(textwrap.dedent(NAN_PROGRAM))
    run = tmp_path / "run"
    result = subprocess.run(
        [*FIT, "--model", f"{program}:make", "--epochs", "5", "--checkpoint-steps", "4", "--out", str(run)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    (message,) = result.stderr.strip().splitlines()  # one line: no warning printed beside it
    assert re.search(r"epoch \d+, step \d+", message) and "nan" in message.lower(), message
    assert "Traceback" not in result.stderr
    state = read_state(run / "checkpoint")  # intact: sha256 verified
    assert 0 < state["step"] < 30
    weights = _weights(run)
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (run / "metrics.json").exists()
