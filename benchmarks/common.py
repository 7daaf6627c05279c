"""Helpers shared by the benchmark scripts: data, a reference VAE of the same networks, timing."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mnist(points: int | None = None, split: str = "x_test") -> torch.Tensor | None:
    """MNIST rows in [0, 1] from ../shared/data, or None where it is absent."""
    path = ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        x = f[split][:points].reshape(-1, 784).astype(np.float32) / 255.0
    return torch.from_numpy(x)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(script: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``script --worker ...`` in a fresh process (its own peak memory, start-up, caches) and read its JSON line.

    ``env`` adds to (or overrides) this process's environment. A worker that fails ends the script in one
    line with the worker's own last line of error, not a traceback that hides it."""
    env = None if env is None else {**os.environ, **env}
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        raise SystemExit(f"{Path(script).name}: a worker ({' '.join(args)}) failed: {last}")
    said = out.stdout.strip().splitlines()
    if not said:
        raise SystemExit(f"{Path(script).name}: a worker ({' '.join(args)}) printed no result")
    return json.loads(said[-1])


def count(text: str) -> int:
    """An argparse type: a whole number ≥ 1 (argparse turns the ValueError into one line and exit 2)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def median(values) -> float:
    return statistics.median(values)
