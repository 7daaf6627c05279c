"""Peak memory of training on a .npy file larger than what it should take in memory.

    python benchmarks/mmap_memory.py --mb 1024      # writes a 1 GiB float32 .npy, trains one epoch on it
    python benchmarks/mmap_memory.py --smoke

The training process's peak resident memory (ru_maxrss, torch and everything included) is
printed beside the file's size and beside the same process training on the small digits set,
which is what the interpreter, torch and the networks cost by themselves.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_of(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - start, max(after, before) / 1024.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=1024, help="size of the .npy file in MiB")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.mb = 4
    d = 784
    n = args.mb * (1 << 20) // (4 * d)
    fit = [sys.executable, "-m", "ppl_vae", "fit", "--epochs", "1", "--hidden-dim", "64", "--no-progress", "--overwrite"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        rng = np.random.default_rng(0)
        for start in range(0, n, 8192):  # written in pieces: this process stays small too
            out[start : start + 8192] = rng.random((min(8192, n - start), d), dtype=np.float32)
        out.flush()
        del out
        size_mb = path.stat().st_size / (1 << 20)
        # the baseline first: ru_maxrss of children is the maximum over all of them so far
        base_s, base_mb = peak_of([*fit, "--out", f"{tmp}/digits"])
        big_s, big_mb = peak_of([*fit, "--data", str(path), "--out", f"{tmp}/big"])
    print(f"file: {size_mb:.0f} MiB ({n} rows of {d} float32)")
    print(f"train one epoch on the file: peak RSS {big_mb:.0f} MiB, {big_s:.1f} s")
    print(f"the same process on digits:  peak RSS {base_mb:.0f} MiB, {base_s:.1f} s (interpreter, torch, networks)")
    print(f"peak / file size = {big_mb / size_mb:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
