"""Peak memory of training on a .npy file larger than what it should take in memory.

    python benchmarks/mmap_memory.py --mb 1024      # writes a 1 GiB float32 .npy, trains one epoch on it
    python benchmarks/mmap_memory.py --smoke

The training process's peak resident memory (ru_maxrss, torch and everything included) is
printed beside the file's size and beside the same process training on the small digits set,
which is what the interpreter, torch and the networks cost by themselves.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the child reports its own peak RSS (ru_maxrss of RUSAGE_CHILDREN would be the max over all children)
REPORT_PEAK = (
    "import resource, runpy, sys\n"
    "sys.argv = ['ppl-vae', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('ppl_vae', run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


def peak_of(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of ``ppl-vae ARGS`` in a child process."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", REPORT_PEAK, *args], capture_output=True, text=True)
    if "PEAK_KB" not in out.stdout:
        raise RuntimeError(out.stderr[-2000:])
    kb = int(out.stdout.split("PEAK_KB")[-1].split()[0])
    return time.perf_counter() - start, kb / 1024.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=1024, help="size of the .npy file in MiB")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.mb = 4
    d = 784
    n = args.mb * (1 << 20) // (4 * d)
    fit = ["fit", "--epochs", "1", "--hidden-dim", "64", "--no-progress", "--overwrite"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.npy"
        # written in pieces through a plain file: the parent's own memory stays small (a child's
        # peak RSS can start from its parent's at fork)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
            rng = np.random.default_rng(0)
            for start in range(0, n, 8192):
                f.write(rng.random((min(8192, n - start), d), dtype=np.float32).tobytes())
        size_mb = path.stat().st_size / (1 << 20)
        base_s, base_mb = peak_of([*fit, "--out", f"{tmp}/digits"])
        big_s, big_mb = peak_of([*fit, "--data", str(path), "--out", f"{tmp}/big"])
    print(f"file: {size_mb:.0f} MiB ({n} rows of {d} float32)")
    print(f"train one epoch on the file: peak RSS {big_mb:.0f} MiB, {big_s:.1f} s")
    print(f"the same process on digits:  peak RSS {base_mb:.0f} MiB, {base_s:.1f} s (interpreter, torch, networks)")
    print(f"peak / file size = {big_mb / size_mb:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
