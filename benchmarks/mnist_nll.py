"""Test NLL on dynamically binarized MNIST, the IWAE paper's one-stochastic-layer architecture.

    python benchmarks/mnist_nll.py --epochs 100            # diagonal and IAF guides, IWAE-5000
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
import sys
import time

import numpy as np
import torch

from common import ROOT, mnist

import pyro  # noqa: E402

from ppl_vae.compare import paired_difference  # noqa: E402
from ppl_vae.config import Config  # noqa: E402
from ppl_vae.data import Dataset  # noqa: E402
from ppl_vae.evaluate import importance_sample  # noqa: E402
from ppl_vae.run import fit  # noqa: E402


def config(guide: str, epochs: int, hidden: int, latent: int) -> Config:
    c = Config()
    c.data.binarize = True
    c.model.likelihood, c.model.hidden_dim, c.model.hidden_layers, c.model.latent_dim = "bernoulli", hidden, 2, latent
    c.guide.name, c.guide.flows = guide, 2
    c.train.epochs, c.train.batch_size, c.train.lr = epochs, 100, 1e-3
    return c.validate()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--test-points", type=int, default=10000)
    p.add_argument("--out", default=str(ROOT / "runs" / "mnist-nll"))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    hidden, latent, n_train = 200, 50, None
    if args.smoke:
        args.epochs, args.k, args.test_points, hidden, latent, n_train = 1, 10, 50, 16, 4, 500
    x_train, x_test = mnist(n_train, "x_train"), mnist(None, "x_test")
    if x_train is None:
        print("MNIST not found in ../shared/data; nothing to measure")
        return 0
    x_test = torch.bernoulli(x_test[: args.test_points], generator=torch.Generator().manual_seed(123))
    data = Dataset("binarized-mnist", x_train, x_test, (28, 28))
    results, pointwise = {}, {}
    for guide in ("diagonal", "iaf"):
        start = time.perf_counter()
        run = fit(config(guide, args.epochs, hidden, latent), f"{args.out}/{guide}", overwrite=True, progress=not args.smoke, data=data)
        train_seconds = time.perf_counter() - start
        pyro.set_rng_seed(0)
        start = time.perf_counter()
        est = importance_sample(run.program.model, run.program.guide, x_test, args.k, progress=not args.smoke)
        pointwise[guide] = -est.log_px.numpy()
        results[guide] = {
            "nll": float(pointwise[guide].mean()),
            "nll_se": float(pointwise[guide].std(ddof=1) / np.sqrt(len(x_test))),
            "elbo": float(est.elbo.mean()),
            "epochs": args.epochs,
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - start,
        }
        r = results[guide]
        print(f"{guide:9s} test NLL (IWAE-{args.k}) {r['nll']:.2f} ± {r['nll_se']:.2f} nats, -ELBO {-r['elbo']:.2f}, "
              f"{args.epochs} epochs in {train_seconds / 60:.1f} min, evaluation {r['eval_seconds'] / 60:.1f} min", flush=True)
    diff, se = paired_difference(pointwise["diagonal"], pointwise["iaf"])
    print(f"NLL(diagonal) - NLL(iaf) = {diff:.3f} ± {se:.3f} (paired over {len(x_test)} test points; {diff / se if se else float('nan'):.1f} SE)")
    results["paired_difference"] = {"diagonal_minus_iaf": diff, "se": se}
    with open(f"{args.out}/results.json", "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
