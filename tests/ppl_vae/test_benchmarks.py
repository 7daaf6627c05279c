"""Every benchmark script runs in its smoke mode, so none of them can rot (no timing asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize(
    "script,expect",
    [
        ("train_speed.py", "a/b ="),
        ("train_speed.py --whole-run 2", "default/f ="),
        ("m2_step_speed.py", "x eager)"),
        ("eval_speed.py", "sampling/best 1.000"),
        ("mmap_memory.py", "peak / file size ="),
        ("mnist_nll.py", "NLL"),
        ("priors_table.py", "HVAE, VampPrior, IWAE-3 training (ours)"),
        ("make_run_time.py", "start: imports, data, checks"),
    ],
)
def test_benchmark_smoke(script, expect, tmp_path):
    script, *options = script.split()
    args = [sys.executable, str(BENCHMARKS / script), "--smoke", *options]
    if script in ("mnist_nll.py", "priors_table.py"):
        args += ["--out", str(tmp_path / "out")]
    result = subprocess.run(args, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expect in result.stdout or "not found" in result.stdout, result.stdout


def test_gpu_check_runs_or_says_why_not():
    """The GPU check script runs the CUDA benchmark where there is a device, and says so in one line where not."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: run `make benchmarks-gpu` instead (minutes, not a test)")
    env = {"PY": sys.executable, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "no CUDA device: the GPU check needs one"
    direct = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_speed.py"), "--device", "cuda"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert direct.returncode == 2 and "sees no CUDA device" in direct.stderr
