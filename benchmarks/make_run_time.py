"""Where `make run`'s time goes: its two commands, each part timed by the bench itself (``-v``).

    python benchmarks/make_run_time.py            # make run's commands, on digits, at their defaults
    python benchmarks/make_run_time.py --smoke    # two epochs and a small evaluation (what the tests run)

Each command runs in a fresh process, as `make run` runs it. Its start (the interpreter, torch,
Pyro, the registries, the data and the checks: everything before the first line it logs) is measured
from the outside; the
rest is the parts the bench logs at ``-v`` as ``part: N.N s``, and what no part claims is printed
as "other" so that every row adds up to the command's wall time. The install is not measured here:
it is the first ``make`` target, timed by CI (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PART = re.compile(r"^ppl-vae: (?P<part>.+): (?P<seconds>\d+\.\d) s$")


def timed_command(args: list[str]) -> tuple[float, float, list[tuple[str, float]]]:
    """(wall seconds, seconds to the first logged line, [(part, seconds)]) of ``ppl-vae ARGS -v``."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppl_vae", *args, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first, parts = None, []
    for line in proc.stdout:
        first = first if first is not None else time.perf_counter() - start
        match = PART.match(line.strip())
        if match:
            parts.append((match["part"], float(match["seconds"])))
        elif line.startswith("ppl-vae: epoch ") and line.rstrip().endswith(" s)"):
            epoch = float(line.rsplit("(", 1)[1].split()[0])
            parts.append(("training", epoch))
    if proc.wait() != 0:
        raise SystemExit(f"ppl-vae {' '.join(args)} failed with exit code {proc.returncode}")
    return time.perf_counter() - start, first or 0.0, parts


def table(name: str, wall: float, first: float, parts: list[tuple[str, float]]) -> list[str]:
    totals: dict[str, float] = {"start: imports, data, checks (to the first line logged)": first}
    for part, seconds in parts:
        totals[part] = totals.get(part, 0.0) + seconds
    totals["other (checkpoints, tables, what no part claims)"] = wall - sum(totals.values())
    rows = [f"{name}: {wall:.1f} s"]
    rows += [f"  {part:55s} {seconds:6.1f} s  {seconds / wall:5.1%}" for part, seconds in totals.items()]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="two epochs and a small evaluation")
    args = p.parse_args(argv)
    fit = ["--epochs", "2"] if args.smoke else []
    evaluate = ["--k", "50", "--gap-points", "5", "--sbc-simulations", "20"] if args.smoke else []
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "digits")
        lines = table("ppl-vae fit", *timed_command(["fit", "--out", run, "--overwrite", *fit]))
        lines += table("ppl-vae evaluate", *timed_command(["evaluate", run, *evaluate]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
