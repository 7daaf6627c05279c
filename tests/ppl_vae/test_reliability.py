"""Crashes, signals and divergence: nothing is lost, and a resumed run is the run that was interrupted."""

import csv
import json
import os
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

FIT = [sys.executable, "-m", "ppl_vae", "fit", "--hidden-dim", "32", "--no-progress", "--no-compile"]  # the eager step


_SPAWNED: list[subprocess.Popen] = []


def _interruptible() -> None:
    # a suite started in the background (`make test &`) ignores SIGINT, and an ignored signal is inherited:
    # the commands under test get Ctrl-C as a terminal would deliver it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(*args, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(*args, preexec_fn=_interruptible, **kwargs)
    _SPAWNED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """A failed test must not leave a training process running."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


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


def _here(argv: list[str]) -> int:
    """``argv`` (a command line, ``python -m ppl_vae`` and all) run in this process: the same code without the
    seconds of a new interpreter importing torch, for the commands a test only prepares or compares with."""
    from ppl_vae.cli import main

    assert argv[1:3] == ["-m", "ppl_vae"], argv
    return main(argv[3:])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, compiled):
    args = ["--epochs", "6", "--checkpoint-steps", "5", *(["--compile"] if compiled else [])]
    # the eager step in this process; the compiled one in processes of its own, as its caches are per process
    command = (lambda argv: subprocess.run(argv, capture_output=True).returncode) if compiled else _here
    reference = tmp_path / "reference"
    assert command([*FIT, *args, "--out", str(reference)]) == 0

    run = tmp_path / "killed"
    proc = _spawn([*FIT, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_step(run, 27, proc)  # mid-epoch: 12 steps an epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists(), "killed before the end"
    assert command([*FIT[:4], "--resume", str(run), "--no-progress"]) == 0

    a, b = _weights(reference), _weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _numbers(run) == _numbers(reference)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = _spawn(
        [*FIT, "--epochs", "500", "--checkpoint-every", "1000", "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    # a new run trains in a staging directory beside --out until its first checkpoint
    while not list(tmp_path.glob(".run.staging-*/config.toml")) and time.time() < deadline:
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


# --- races and crashes against the transactions -------------------------------------------------

EVAL = ["--k", "8", "--points", "20", "--gap-points", "2", "--gap-steps", "2", "--sbc-simulations", "10"]
EVAL += ["--sbc-draws", "5", "--idata-points", "30", "--idata-draws", "8", "--no-progress"]


def _wait_for(predicate, proc, timeout=120.0, what="the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} never held (process exit code {proc.poll()})")


def test_two_writers_of_one_run_one_wins_the_other_exits_2(tmp_path, capsys):
    from ppl_vae.cli import main

    out = tmp_path / "run"
    first = _spawn(
        [*FIT, "--epochs", "500", "--seed", "1", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for((tmp_path / ".run.lock").exists, first, what="the first writer's lock")
    # the second writer, in this process: the lock is per open file, so it conflicts as another process would
    assert main(["fit", "--epochs", "1", "--seed", "2", "--out", str(out), "--overwrite", "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"being written by another ppl-vae process (pid {first.pid})" in line
    first.send_signal(signal.SIGINT)  # the winner stops at its next step with a checkpoint
    first.communicate(timeout=120)
    assert first.returncode == 130
    state = read_state(out / "checkpoint")
    assert state["config"]["train"]["seed"] == 1 and "seed = 1" in (out / "config.toml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_reader_during_a_writer_always_loads_a_whole_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert _here([*FIT, "--epochs", "1", "--checkpoint-steps", "1", "--out", str(out)]) == 0
    writer = _spawn(
        [*FIT[:4], "--resume", str(out), "--epochs", "1000", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = read_state(out / "checkpoint")["step"]
    _wait_for(lambda: read_state(out / "checkpoint")["step"] > first, writer, what="a new checkpoint")
    steps = []
    while writer.poll() is None and (len(steps) < 10 or len(set(steps)) < 4):
        run = ppl_vae.load(out)  # never a missing file, a digest mismatch or a half state
        assert run.sample(2).shape == (2, 64)
        steps.append(run.checkpoint["step"])
    writer.send_signal(signal.SIGINT)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 130, err
    assert len(set(steps)) >= 4, steps  # it read while the checkpoint was being replaced, step after step
    assert steps == sorted(steps)


@pytest.fixture(scope="module")
def evaluated_base(tmp_path_factory):
    from ppl_vae.cli import main

    out = tmp_path_factory.mktemp("evaluated") / "run"
    assert main(["fit", "--out", str(out), "--epochs", "1", "--hidden-dim", "32", "--no-progress"]) == 0
    assert main(["evaluate", str(out), *EVAL]) == 0
    return out


@pytest.fixture
def evaluated_run(evaluated_base, tmp_path):
    import shutil

    shutil.copytree(evaluated_base, tmp_path / "run")
    return tmp_path / "run"


def _evaluation(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "evaluation").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_while_writing_an_evaluation_leaves_the_old_one_whole(evaluated_run, sig):
    """Killed while the new evaluation is being written: the old one stays, whole; SIGTERM says so in one
    line; the next evaluate removes what the killed one left and writes a whole new evaluation."""
    old = _evaluation(evaluated_run)
    proc = _spawn(
        [sys.executable, "-m", "ppl_vae", "evaluate", str(evaluated_run), *EVAL, "--eval-seed", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: list(evaluated_run.glob(".evaluation.staging-*")), proc, what="the staging directory")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        (line,) = err.strip().splitlines()
        assert "previous evaluation is unchanged" in line
        assert not list(evaluated_run.glob(".evaluation.staging-*"))  # cleaned up on the way out
    new = _evaluation(evaluated_run)
    assert new == old or json.loads(new["evaluation/settings.json"])["evaluate"]["seed"] == 1  # never a mix
    assert set(new) == set(old)

    from ppl_vae.cli import main

    assert main(["evaluate", str(evaluated_run), *EVAL, "--eval-seed", "2"]) == 0
    assert not [p for p in evaluated_run.rglob(".*")]
    assert json.loads((evaluated_run / "evaluation" / "settings.json").read_text())["evaluate"]["seed"] == 2


def _limit_file_size(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_during_fit_is_one_line_and_leaves_nothing(tmp_path):
    """Writes beyond 64 KiB fail as on a full disk (EFBIG; Python ignores SIGXFSZ): the first checkpoint fails."""
    result = subprocess.run(
        [*FIT, "--epochs", "1", "--hidden-dim", "256", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(64 << 10),
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "File too large; nothing was replaced" in line
    assert list(tmp_path.iterdir()) == []


# --- programs that do not cooperate, and signals at any moment ------------------------------------

STUCK = """
import threading, time
import pyro, pyro.distributions as dist
from torch import nn

CALLS = [0]

class Program(nn.Module):
    def __init__(self, data_dim, latent_dim):
        super().__init__()
        self.dec = nn.Linear(latent_dim, data_dim)
        self.enc = nn.Linear(data_dim, 2 * latent_dim)

    def model(self, x):
        CALLS[0] += 1
        while CALLS[0] > {stuck_after}:  # stuck: no step boundary is ever reached again
            open({marker!r}, "w").close()
            try:
                time.sleep(0.01)
            except Exception:  # a program that swallows what it can
                pass
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.dec.in_features), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.1).to_event(1), obs=x)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

def make(data_dim, latent_dim):
    if {thread}:
        threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon: it would hold the process
    return Program(data_dim, latent_dim)
"""


def _stuck_program(tmp_path: Path, stuck_after: int = 10**9, thread: bool = False) -> str:
    """A program whose model never returns from its call number ``stuck_after`` on (it then creates ``stuck``)."""
    path = tmp_path / "stuck.py"
    path.write_text(STUCK.format(stuck_after=stuck_after, thread=thread, marker=str(tmp_path / "stuck")))
    return f"{path}:make"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_second_signal_stops_a_stuck_program_at_once_and_keeps_the_last_checkpoint(tmp_path, sig):
    run = tmp_path / "run"
    proc = _spawn(
        [*FIT, "--model", _stuck_program(tmp_path, 60), "--epochs", "50", "--checkpoint-steps", "5"]
        + ["--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for((tmp_path / "stuck").exists, proc, what="the program stuck")
    kept = read_state(run / "checkpoint")
    assert kept["step"] >= 5
    proc.send_signal(sig)
    time.sleep(0.5)
    assert proc.poll() is None, "the first signal waits for the step boundary"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    (line,) = err.strip().splitlines()
    assert "Traceback" not in err and "twice" in line
    assert f"the last whole checkpoint (epoch {kept['epoch']}, step {kept['step']}) is kept" in line, line
    assert read_state(run / "checkpoint") == kept
    assert not list(tmp_path.glob(".run.*")) and not list(run.rglob(".*.tmp-*"))


def test_a_step_that_outlives_the_grace_period_is_stopped(tmp_path):
    from ppl_vae.inference.trainer import GRACE_SECONDS

    run = tmp_path / "run"
    proc = _spawn(
        [*FIT, "--model", _stuck_program(tmp_path, 60), "--epochs", "50", "--checkpoint-steps", "5"]
        + ["--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for((tmp_path / "stuck").exists, proc, what="the program stuck")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=GRACE_SECONDS + 60)
    assert proc.returncode == 130, err
    (line,) = err.strip().splitlines()
    assert f"did not end within {GRACE_SECONDS:g}s" in line and "is kept" in line, line


def test_a_thread_the_program_leaves_running_does_not_hold_the_process(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [*FIT, "--model", _stuck_program(tmp_path, thread=True), "--epochs", "1", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "trained 1 epochs" in result.stdout
    assert (run / "metrics.json").exists() and (run / "report.md").exists()


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_while_starting_is_one_line(tmp_path, delay):
    proc = _spawn([*FIT, "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)  # the imports of torch, pyro and the registries take seconds
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob(".*"))  # no staging directory, no lock: nothing, or a whole run with its checkpoint


def test_a_path_the_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path):
    run = tmp_path / "run"
    assert _here([*FIT, "--epochs", "1", "--out", str(run)]) == 0
    out = tmp_path / "échantillons.PNG"
    result = subprocess.run(
        [sys.executable, "-m", "ppl_vae", "sample", str(run), "--out", str(out)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert result.returncode == 0, result.stderr
    assert b"\\xe9chantillons.PNG" in result.stdout and not result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
