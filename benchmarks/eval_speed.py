"""IWAE-K evaluation: ppl_vae's importance sampler against a hand-vectorized torch estimator.

    python benchmarks/eval_speed.py                  # K = 1000, 2000 MNIST test points
    python benchmarks/eval_speed.py --k 5000         # the memory check of the workflow issue
    python benchmarks/eval_speed.py --smoke          # tiny sizes (what the tests run)

(auto)     ppl_vae's ``importance_sample`` as ``evaluate`` runs it (``--compile-sampler auto``);
(eager)    the same, never compiled (``--no-compile-sampler``);
(compiled) the same, its chunk recorded and compiled whatever the estimate (``--compile-sampler``);
(hand)     the same estimator written by hand in torch (IWAE only: no rate, distortion, moments);
(best)     that hand-written chunk under ``torch.compile`` — the reference.

Each measurement runs in its own process, alternating, so peak memory (max RSS of that
process, torch included) belongs to one estimator. Prints medians, the one-off compile time,
and each ratio against (best), with and without compiling.
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


def hand_chunk(program, sigma: float):
    """One chunk of the same estimator written by hand: encode, reparameterise kk draws, decode: (kk, b)."""
    enc = program.guide_module.encoder
    dec = program.model_module.decoder
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def chunk(xb: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        q = enc(xb).base_dist  # Normal(μ, s), (b, L)
        z = q.loc + q.scale * eps  # (kk, b, L)
        log_q = (-0.5 * eps**2 - q.scale.log() - half_log_2pi).sum(-1)
        log_p_z = (-0.5 * z**2 - half_log_2pi).sum(-1)
        d = xb.shape[-1]
        log_p_x = -((xb - dec(z)) ** 2).sum(-1) / (2 * sigma**2) - d * (math.log(sigma) + half_log_2pi)
        return log_p_x + log_p_z - log_q

    return chunk


@torch.inference_mode()
def hand_iwae(chunk, x: torch.Tensor, k: int, rows: int, latent: int) -> torch.Tensor:
    """IWAE-K of every row of ``x`` from ``chunk``, in the sampler's chunks."""
    out = []
    n_chunk = max(1, rows // k) if k <= rows else 1
    k_chunk = min(k, rows)
    for xb in x.split(n_chunk):
        parts = []
        for k0 in range(0, k, k_chunk):
            kk = min(k_chunk, k - k0)
            parts.append(chunk(xb, torch.randn(kk, xb.shape[0], latent)))  # (kk, b)
        lw = torch.cat(parts)
        out.append(torch.logsumexp(lw, 0) - math.log(k))
    return torch.cat(out)


def worker(args) -> None:
    torch.manual_seed(0)
    x = mnist(args.points) if not args.smoke else None
    x = x if x is not None else torch.rand(args.points, args.dim)
    program = build(x.shape[1], args.hidden, args.latent)
    from ppl_vae.diagnostics import estimators
    from ppl_vae.inference.recording import Recorder

    compiling = [0.0]
    record = Recorder._record

    def timed(self, *a, **kw):  # the one-off recording, compiling and check, timed apart from the sampling
        start = time.perf_counter()
        try:
            return record(self, *a, **kw)
        finally:
            compiling[0] = time.perf_counter() - start

    Recorder._record = timed
    start = time.perf_counter()
    if args.worker in ("auto", "eager", "compiled"):
        mode = {"auto": "auto", "eager": "off", "compiled": "on"}[args.worker]
        log_px = estimators.importance_sample(program.model, program.guide, x, args.k, compile=mode).log_px
    else:
        chunk = hand_chunk(program, float(program.model_module.likelihood.sigma))
        rows = estimators.ROWS_PER_CHUNK
        if args.worker == "best":
            chunk = torch.compile(chunk, dynamic=False)
            b, kk = (min(len(x), max(1, rows // args.k)), args.k) if args.k <= rows else (1, rows)
            state = torch.get_rng_state()  # the warm-up's draws are not the estimate's
            with torch.inference_mode():  # compile the common chunk shape now, timed apart
                chunk(x[:b], torch.randn(kk, b, args.latent))
            torch.set_rng_state(state)
            compiling[0] = time.perf_counter() - start
        log_px = hand_iwae(chunk, x, args.k, rows, args.latent)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {"seconds": seconds, "compile": compiling[0], "peak_mb": peak_rss_mb(), "log_px": float(log_px.mean())}
        )
    )


WORKERS = ("auto", "eager", "compiled", "hand", "best")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--dim", type=int, default=784, help="data dimension when MNIST is absent")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, random data")
    p.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
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
    # the smoke run (the test suite's) leaves out the hand-written eager estimator: the rest is what can rot
    results = {name: [] for name in WORKERS if not (args.smoke and name in ("eager", "hand"))}
    for _ in range(args.repeats):
        for name in results:  # alternate, so drift on a noisy machine hits every one
            results[name].append(run_worker(__file__, [f"--worker={name}", *shared]))
    t = {name: median([r["seconds"] for r in rs]) for name, rs in results.items()}
    c = {name: median([r["compile"] for r in rs]) for name, rs in results.items()}
    run = {name: t[name] - c[name] for name in results}  # sampling alone, the one-off compile left out
    mem = {name: max(r["peak_mb"] for r in rs) for name, rs in results.items()}
    print(
        f"IWAE-{args.k} on {args.points} points, {args.repeats} runs each "
        f"(median seconds, of which compiling; peak RSS of the process; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads):"
    )
    for name in results:
        print(
            f"  {name:9s} {t[name]:8.2f} s  (compiling {c[name]:6.2f} s)   peak {mem[name]:7.0f} MB   "
            f"log p(x) {results[name][0]['log_px']:.2f}   sampling/best {run[name] / run['best']:.3f}   "
            f"total/best {t[name] / t['best']:.3f}"
        )
    if "hand" in t:
        print(f"time ratio ppl_vae/hand = {t['auto'] / t['hand']:.3f}")
    print(f"ppl_vae peak memory = {mem['auto'] / 1024:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
