"""IWAE-K evaluation: ppl_vae's importance sampler against a hand-vectorized torch estimator.

    python benchmarks/eval_speed.py                  # K = 1000, 2000 MNIST test points
    python benchmarks/eval_speed.py --k 5000         # the memory check of the workflow issue
    python benchmarks/eval_speed.py --smoke          # tiny sizes (what the tests run)

Each measurement runs in its own process, alternating the two, so peak memory (max RSS of
that process, torch included) belongs to one estimator. Prints medians and the time ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from common import median, mnist, peak_rss_mb, run_worker


def build(data_dim: int, hidden: int, latent: int):
    import pyro

    from ppl_vae.config import Config
    from ppl_vae.runs.build import build_program

    config = Config()
    config.model.hidden_dim, config.model.latent_dim = hidden, latent
    pyro.set_rng_seed(0)
    return build_program(config, data_dim, (data_dim,))


@torch.inference_mode()
def hand_iwae(program, x: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """The same estimator written by hand: encode, reparameterise K draws, decode, log-mean-exp."""
    enc = program.guide_module.encoder
    dec = program.model_module.decoder
    sigma = float(program.model_module.likelihood.sigma)
    d = x.shape[1]
    const = -0.5 * d * math.log(2 * math.pi * sigma**2)
    out = []
    n_chunk = max(1, rows // k) if k <= rows else 1
    k_chunk = min(k, rows)
    for xb in x.split(n_chunk):
        q = enc(xb).base_dist  # Normal(μ, s), (b, L)
        parts = []
        for k0 in range(0, k, k_chunk):
            kk = min(k_chunk, k - k0)
            eps = torch.randn((kk,) + q.loc.shape)
            z = q.loc + q.scale * eps  # (kk, b, L)
            log_q = (-0.5 * eps**2 - q.scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_p_z = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_p_x = -((xb - dec(z)) ** 2).sum(-1) / (2 * sigma**2) + const
            parts.append(log_p_x + log_p_z - log_q)  # (kk, b)
        lw = torch.cat(parts)
        out.append(torch.logsumexp(lw, 0) - math.log(k))
    return torch.cat(out)


def worker(args) -> None:
    torch.manual_seed(0)
    x = mnist(args.points) if not args.smoke else None
    x = x if x is not None else torch.rand(args.points, args.dim)
    program = build(x.shape[1], args.hidden, args.latent)
    from ppl_vae.diagnostics.estimators import ROWS_PER_CHUNK, importance_sample

    start = time.perf_counter()
    if args.worker == "ppl_vae":
        log_px = importance_sample(program.model, program.guide, x, args.k).log_px
    else:
        log_px = hand_iwae(program, x, args.k, ROWS_PER_CHUNK)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "log_px": float(log_px.mean())}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--dim", type=int, default=784, help="data dimension when MNIST is absent")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, random data")
    p.add_argument("--worker", choices=["ppl_vae", "hand"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.k, args.points, args.repeats, args.hidden, args.latent, args.dim = 20, 30, 1, 16, 3, 12
    if args.worker:
        worker(args)
        return 0
    shared = [
        f"--k={args.k}",
        f"--points={args.points}",
        f"--hidden={args.hidden}",
        f"--latent={args.latent}",
        f"--dim={args.dim}",
    ]
    shared += ["--smoke"] if args.smoke else []
    results = {"ppl_vae": [], "hand": []}
    for _ in range(args.repeats):
        for name in results:  # alternate, so drift on a noisy machine hits both
            results[name].append(run_worker(__file__, [f"--worker={name}", *shared]))
    t = {name: median([r["seconds"] for r in rs]) for name, rs in results.items()}
    mem = {name: max(r["peak_mb"] for r in rs) for name, rs in results.items()}
    print(f"IWAE-{args.k} on {args.points} points, {args.repeats} runs each (median seconds, peak RSS of the process):")
    for name in results:
        print(f"  {name:8s} {t[name]:8.2f} s   peak {mem[name]:7.0f} MB   log p(x) {results[name][0]['log_px']:.2f}")
    print(f"time ratio ppl_vae/hand = {t['ppl_vae'] / t['hand']:.3f}")
    print(f"ppl_vae peak memory = {mem['ppl_vae'] / 1024:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
