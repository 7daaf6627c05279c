"""Studies on an executor: local worker processes and a real local Ray cluster give the sequential numbers."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.errors import UserError
from ppl_vae.studies.executors import Executor, make_executor

ROOT = Path(__file__).resolve().parents[3]
STUDY = [
    "compare",
    "--grid",
    "latent_dim=2,4",
    "--epochs",
    "3",
    "--limit",
    "400",
    "--hidden-dim",
    "16",
    "--k",
    "8",
    "--points",
    "40",
    "--gap-points",
    "0",
    "--sbc-simulations",
    "0",
    "--idata-points",
    "10",
    "--idata-draws",
    "3",
    "--no-progress",
]


def _numbers(out: Path) -> list[dict]:
    """The comparison's rows without the wall-clock time, which no two runs share."""
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {d.name: ppl_vae.load(d).program.state_dict() for d in sorted((out / "runs").iterdir())}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "sequential"
    assert main([*STUDY, "--out", str(out)]) == 0
    return out


def _same_study(a: Path, b: Path) -> None:
    assert _numbers(a) == _numbers(b)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        for key, tensor in wa[name].items():
            assert torch.equal(tensor, wb[name][key]), (name, key)  # bit for bit


@pytest.mark.parametrize("extra", [["--jobs", "2"], ["--executor", "ray", "--cpus-per-job", "1"]], ids=["jobs2", "ray"])
def test_an_executor_gives_the_sequential_study_bit_for_bit(sequential, tmp_path, capsys, extra):
    if "ray" in extra:
        ray = pytest.importorskip("ray", reason="the ray extra is not installed")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a real local cluster
    try:
        if "ray" in extra:  # a job no node could take is refused, not left waiting
            assert main([*STUDY, *extra, "--gpus-per-job", "1", "--out", str(tmp_path / "none")]) == 2
            assert "no job could start" in capsys.readouterr().err and not (tmp_path / "none").exists()
        assert main([*STUDY, *extra, "--out", str(tmp_path / "study")]) == 0
    finally:
        if "ray" in extra:
            ray.shutdown()
    _same_study(sequential, tmp_path / "study")


def test_a_killed_parallel_study_resumes_to_the_sequential_numbers(sequential, tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "ppl_vae", *STUDY, "--jobs", "2", "--checkpoint-every", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("runs/*/checkpoint/state.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the study ended before it could be interrupted"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the study and its workers, mid-training
        proc.wait()
    assert not (out / "comparison.json").exists()
    assert main([*STUDY, "--jobs", "2", "--checkpoint-every", "1", "--out", str(out)]) == 0
    _same_study(sequential, out)


def _closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_executor_options_are_checked_in_one_line(tmp_path, capsys):
    for bad, says in (
        (["--jobs", "0"], "jobs"),
        (["--executor", "dask"], "executor"),
        (["--address", "10.0.0.1:6379"], "--executor ray"),
        (["--executor", "ray", "--address", f"127.0.0.1:{_closed_port()}"], "cannot reach the Ray cluster"),
    ):
        assert main([*STUDY, *bad, "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "s").exists()
    with pytest.raises(UserError, match="expected local or ray"):
        make_executor("threads")


def test_a_job_error_reaches_the_caller_as_itself():
    def fail(job, shared):
        raise UserError(f"job {job} refused")

    for executor in (Executor(), make_executor("local", jobs=1)):
        with pytest.raises(UserError, match="job 1 refused"):
            executor.map(fail, [1, 2])
