"""Test NLL on dynamically binarized MNIST, the IWAE paper's one-stochastic-layer architecture.

    python benchmarks/mnist_nll.py --epochs 500            # diagonal and IAF guides side by side, IWAE-5000
    python benchmarks/mnist_nll.py --smoke                 # tiny sizes (what the tests run)

784-200-200-50 encoder and decoder (Burda et al. 2016, Table 1, k=1 VAE), Bernoulli likelihood,
training images re-binarized at every draw, the test set binarized once with a fixed seed.
Prints the test NLL (nats, lower is better) of each guide from IWAE-K, and the paired
difference over test points with its standard error. Published anchors: IWAE paper VAE
(k=1) 86.76 after 3280 passes; pythae's VAE reproduction 89.78.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyro  # noqa: E402
import torch
from common import ROOT, mnist

from ppl_vae.config import Config  # noqa: E402
from ppl_vae.data.datasets import Dataset  # noqa: E402
from ppl_vae.diagnostics.estimators import importance_sample  # noqa: E402
from ppl_vae.diagnostics.statistics import paired_difference  # noqa: E402
from ppl_vae.runs.fit import fit  # noqa: E402


def config(guide: str, epochs: int, hidden: int, latent: int) -> Config:
    c = Config()
    c.data.binarize = True
    c.model.likelihood, c.model.hidden_dim, c.model.hidden_layers, c.model.latent_dim = "bernoulli", hidden, 2, latent
    c.guide.name, c.guide.flows = guide, 2
    c.train.epochs, c.train.batch_size, c.train.lr = epochs, 100, 1e-3
    c.train.lr_schedule, c.train.lr_final = "cosine", 1e-5
    return c.validate()


def measure(guide: str, args: argparse.Namespace) -> dict:
    """Train one guide and estimate its test NLL; runs in its own process with ``args.threads`` threads."""
    torch.set_num_threads(args.threads)
    hidden, latent, n_train = (16, 4, 500) if args.smoke else (200, 50, None)
    x_train, x_test = mnist(n_train, "x_train"), mnist(None, "x_test")
    x_test = torch.bernoulli(x_test[: args.test_points], generator=torch.Generator().manual_seed(123))
    data = Dataset("binarized-mnist", x_train, x_test, (28, 28))
    start = time.perf_counter()
    run = fit(
        config(guide, args.epochs, hidden, latent),
        f"{args.out}/{guide}",
        overwrite=True,
        progress=args.progress,
        data=data,
    )
    train_seconds = time.perf_counter() - start
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    est = importance_sample(run.program.model, run.program.guide, x_test, args.k, progress=args.progress)
    nll = -est.log_px.numpy()
    np.save(f"{args.out}/{guide}-nll_pointwise.npy", nll)  # beside the run: a run folder holds only its own files
    return {
        "nll": float(nll.mean()),
        "nll_se": float(nll.std(ddof=1) / np.sqrt(len(nll))),
        "elbo": float(est.elbo.mean()),
        "epochs": args.epochs,
        "threads": args.threads,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--test-points", type=int, default=10000)
    p.add_argument("--guides", nargs="+", default=["diagonal", "iaf"])
    p.add_argument("--parallel", type=int, default=2, help="guides trained at once, each in its own process")
    p.add_argument("--out", default=str(ROOT / "runs" / "mnist-nll"))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.k, args.test_points = 1, 10, 50
    if mnist(1, "x_train") is None:
        print("MNIST not found in ../shared/data; nothing to measure")
        return 0
    # on a machine with C cores, P processes of C / P threads each keep every core busy
    args.threads = max(1, torch.get_num_threads() // args.parallel)
    args.progress = not args.smoke and args.parallel == 1
    with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = dict(zip(args.guides, pool.map(measure, args.guides, [args] * len(args.guides))))
    for guide, r in results.items():
        print(
            f"{guide:9s} test NLL (IWAE-{args.k}) {r['nll']:.2f} ± {r['nll_se']:.2f} nats, -ELBO {-r['elbo']:.2f}, "
            f"{r['epochs']} epochs in {r['train_seconds'] / 60:.1f} min ({r['threads']} thread(s)), "
            f"evaluation {r['eval_seconds'] / 60:.1f} min",
            flush=True,
        )
    if len(results) == 2:
        (a, b) = results
        diff, se = paired_difference(*(np.load(f"{args.out}/{g}-nll_pointwise.npy") for g in (a, b)))
        print(
            f"NLL({a}) - NLL({b}) = {diff:.3f} ± {se:.3f} (paired over {args.test_points} test points; "
            f"{diff / se if se else float('nan'):.1f} SE)"
        )
        results["paired_difference"] = {f"{a}_minus_{b}": diff, "se": se}
    with open(f"{args.out}/results.json", "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
