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
        ("eval_speed.py", "time ratio ppl_vae/hand ="),
        ("mmap_memory.py", "peak / file size ="),
        ("mnist_nll.py", "NLL"),
    ],
)
def test_benchmark_smoke(script, expect, tmp_path):
    args = [sys.executable, str(BENCHMARKS / script), "--smoke"]
    if script == "mnist_nll.py":
        args += ["--out", str(tmp_path / "nll")]
    result = subprocess.run(args, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expect in result.stdout or "not found" in result.stdout, result.stdout
