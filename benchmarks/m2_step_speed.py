"""Seconds per training step of the M2 example (``--elbo traceenum``): eager against the recorded step.

    python benchmarks/m2_step_speed.py                       # MNIST's sizes: 784-500-50, 10 classes, batch 200
    python benchmarks/m2_step_speed.py --dim 64 --hidden 64 --latent 8 --batch 64    # digits, m2_small
    python benchmarks/m2_step_speed.py --kinds eager replayed compiled --device cuda
    python benchmarks/m2_step_speed.py --smoke                # tiny sizes (what the tests run)

(e) eager:    Pyro's ``TraceEnum_ELBO`` under the bench's handlers, then ``backward``, at every step;
(r) replayed: the step recorded once per kind of batch (ppl_vae.inference.compiled) and replayed;
(c) compiled: the recording compiled by TorchInductor.

A labelled batch (y observed) and an unlabelled one (y summed over the C classes) are timed apart;
kinds alternate step by step so that drift on a busy machine hits all of them. The data are uniform
noise in [0, 1]: the arithmetic of a step does not depend on the pixels. Prints median milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the examples folder, as the tests import it

from common import median  # noqa: E402

from examples.ss_vae_m2 import M2  # noqa: E402
from ppl_vae.inference.compiled import RecordedStep  # noqa: E402
from ppl_vae.inference.distributed import ProgramLoss  # noqa: E402
from ppl_vae.inference.objectives import Objective  # noqa: E402


def eager_step(loss_fn, program, x, scale, y):
    loss = loss_fn(x, scale, 1.0, y=y)
    value = loss.item()
    program.zero_grad(set_to_none=True)
    loss.backward()
    return value


SIZES = {"dim": 784, "hidden": 500, "latent": 50, "classes": 10, "batch": 200, "steps": 20}  # MNIST's M2
SMOKE = {"dim": 12, "hidden": 8, "latent": 2, "classes": 3, "batch": 8, "steps": 2}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in SIZES.items():  # --steps: timed steps of each kind and batch
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--kinds", nargs="+", default=["eager", "replayed"], choices=["eager", "replayed", "compiled"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, two steps")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    device = torch.device(args.device)
    torch.manual_seed(0)
    program = M2(args.dim, args.latent, args.classes, hidden=args.hidden).to(device)
    x = torch.rand(args.batch, args.dim, device=device)
    batches = {
        "labelled": torch.randint(0, args.classes, (args.batch,), device=device),
        "unlabelled": None,
    }
    loss_fn = ProgramLoss(program, Objective("traceenum"))
    recorded = {k: RecordedStep(program, Objective("traceenum"), k) for k in args.kinds if k != "eager"}
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def step(kind, y):
        if kind == "eager":
            return eager_step(loss_fn, program, x, 100.0, y)
        return recorded[kind](x, 100.0, 1.0, y=y).item()

    for kind in args.kinds:  # record, verify and compile outside the timed steps
        for y in batches.values():
            for _ in range(2):
                step(kind, y)
    times = {(k, b): [] for k in args.kinds for b in batches}
    for _ in range(args.steps):
        for batch, y in batches.items():
            for kind in args.kinds:
                sync()
                start = time.perf_counter()
                step(kind, y)
                sync()
                times[kind, batch].append(time.perf_counter() - start)
    sizes = f"{args.dim}-{args.hidden}-{args.latent}, C={args.classes}, batch {args.batch}"
    print(f"M2 {sizes}, {device}, {torch.get_num_threads()} threads")
    for batch in batches:
        base = median(times["eager", batch]) if "eager" in args.kinds else None
        for kind in args.kinds:
            ms = 1000 * median(times[kind, batch])
            ratio = f"  ({base / median(times[kind, batch]):.2f}x eager)" if base and kind != "eager" else ""
            print(f"  {batch:10s} {kind:8s} {ms:8.2f} ms/step{ratio}")


if __name__ == "__main__":
    main()
