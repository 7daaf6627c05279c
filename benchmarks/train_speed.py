"""Training speed: ppl_vae's loop against hand-written PyTorch and plain Pyro SVI with a DataLoader.

    python benchmarks/train_speed.py                 # MNIST (784-400-50, b256) and digits (64-256-8, b128)
    python benchmarks/train_speed.py --smoke         # tiny sizes (what the tests run)
    python benchmarks/train_speed.py --device cuda   # the same on a GPU
    python benchmarks/train_speed.py --only digits --whole-run 1500   # whole runs: fit's default against (f),
                                                                       # each in a fresh process, empty caches

(a) ppl_vae: ``Trainer.run_epoch`` with ``compile = "on"`` — the step of the Pyro program
             recorded once and replayed (ppl_vae.inference.compiled), in-memory minibatches.
(e) eager:   the same loop without ``compile``: Pyro's Trace_ELBO traced at every step.
(r) replayed: the same loop with the step recorded once and replayed uncompiled (what ``fit``'s default
             takes for runs too short to compile but long enough to record).
(b) hand:    the same networks, the same reparameterised single-sample ELBO and log-densities,
             written as a plain PyTorch loss with ``torch.optim.Adam``.
(c) pyro:    ``pyro.infer.SVI`` with ``Trace_ELBO`` fed by ``DataLoader(TensorDataset)``.
(f) best:    the hand-written loss of (b) under ``torch.compile`` (TorchInductor, its backward through
             AOTAutograd) with fused Adam — the loop a performance engineer writes; the reference.

All see identical initial weights and batch order ((c) shuffles with its own loader).
Epochs alternate a, e, r, f, b, c so drift on a noisy machine hits all of them; the script prints
median seconds per epoch and every ratio against (f).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time

import pyro  # noqa: E402
import pyro.optim  # noqa: E402
import torch
from common import count, median, mnist, run_worker
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

from ppl_vae.config import (
    Config,  # noqa: E402
    DataConfig,
)
from ppl_vae.data.datasets import load_data  # noqa: E402
from ppl_vae.inference.trainer import Trainer, epoch_permutation  # noqa: E402
from ppl_vae.runs.build import build_program  # noqa: E402


def make_config(likelihood: str, hidden: int, latent: int, batch: int, device: str) -> Config:
    c = Config()
    c.model.likelihood, c.model.hidden_dim, c.model.latent_dim = likelihood, hidden, latent
    c.train.batch_size, c.train.device = batch, device
    return c.validate()


def hand_loss(program, config, xb, scale):
    """The same reparameterised single-sample ELBO, written by hand: -(log p(x|z) + log p(z) - log q(z|x)) * N/B."""
    enc_net, head = program.guide_module.encoder.net, program.guide_module.encoder.head
    dec = program.model_module.decoder
    sigma = config.model.sigma
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    loc, raw = head.linear(enc_net(xb)).chunk(2, -1)
    scale_q = torch.nn.functional.softplus(raw) + 1e-4
    eps = torch.randn_like(loc)
    z = loc + scale_q * eps
    log_q = (-0.5 * eps**2 - scale_q.log() - half_log_2pi).sum(-1)
    log_pz = (-0.5 * z**2 - half_log_2pi).sum(-1)
    out = dec(z)
    if config.model.likelihood == "normal":
        log_px = (-((xb - out) ** 2) / (2 * sigma**2) - math.log(sigma) - half_log_2pi).sum(-1)
    else:
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(out, xb, reduction="none").sum(-1)
    return -(log_px + log_pz - log_q).sum() * scale


def hand_epoch(loss_fn, optimizer, x, config, epoch):
    """One epoch of minibatch steps on ``loss_fn(xb, scale)`` (eager or compiled)."""
    n = len(x)
    for idx in epoch_permutation(n, config.train.seed, epoch, x.device).split(config.train.batch_size):
        xb = x[idx]
        loss = loss_fn(xb, n / len(xb))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def pyro_dataloader_epoch(svi, loader, n):
    for (xb,) in loader:
        svi.step(xb, n / len(xb))


def bench(name, x, config, epochs, device):
    pyro.set_rng_seed(0)
    program = build_program(config, x.shape[1], (x.shape[1],)).to(device)
    programs = {k: copy.deepcopy(program) for k in ("a", "e", "r", "b", "c", "f")}
    compiled = copy.deepcopy(config)
    compiled.train.compile = "on"  # forced: a benchmark of a few epochs would not pay for it on auto
    trainer = Trainer(programs["a"], compiled.train, x, x[:2], progress=False)
    eager = Trainer(programs["e"], copy.deepcopy(config.train), x, x[:2], progress=False)
    replayed = Trainer(programs["r"], copy.deepcopy(config.train), x, x[:2], progress=False, step_kind="replay")
    hand_opt = torch.optim.Adam(programs["b"].parameters(), lr=config.train.lr)
    # (f) what a performance engineer writes: fused Adam, the loss (and through AOTAutograd its
    # backward) compiled by TorchInductor; dynamic=False, one graph per batch shape, as (a) records
    best_opt = torch.optim.Adam(programs["f"].parameters(), lr=config.train.lr, fused=True)
    best_loss = torch.compile(lambda xb, scale: hand_loss(programs["f"], config, xb, scale), dynamic=False)
    c_prog = programs["c"]

    # the programs register their modules themselves (pyro.module), so SVI trains them as written
    def model(xb, scale):
        with pyro.poutine.scale(scale=scale):
            c_prog.model(xb)

    def guide(xb, scale):
        with pyro.poutine.scale(scale=scale):
            c_prog.guide(xb)

    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": config.train.lr}), Trace_ELBO())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x.cpu()), batch_size=config.train.batch_size, shuffle=True
    )
    loader = [(b.to(device),) for (b,) in loader] if device != "cpu" else loader

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    runs = {
        "a": lambda e: trainer.run_epoch(),
        "e": lambda e: eager.run_epoch(),
        "r": lambda e: replayed.run_epoch(),
        "f": lambda e: hand_epoch(best_loss, best_opt, x, config, e),
        "b": lambda e: hand_epoch(lambda xb, s: hand_loss(programs["b"], config, xb, s), hand_opt, x, config, e),
        "c": lambda e: pyro_dataloader_epoch(svi, loader, len(x)),
    }
    times = {k: [] for k in runs}
    first = {}
    for epoch in range(epochs + 1):  # the first round warms up caches and allocators
        for key, run in runs.items():
            sync()
            start = time.perf_counter()
            run(epoch)
            sync()
            seconds = time.perf_counter() - start
            if epoch:
                times[key].append(seconds)
            else:
                first[key] = seconds
    t = {k: median(v) for k, v in times.items()}
    print(
        f"{name:30s} " + "  ".join(f"{k} {t[k]:7.3f}s" for k in runs) + "   "
        f"a/f = {t['a'] / t['f']:.3f}   e/f = {t['e'] / t['f']:.3f}   r/f = {t['r'] / t['f']:.3f}   "
        f"b/f = {t['b'] / t['f']:.3f}   "
        f"c/f = {t['c'] / t['f']:.3f}   a/b = {t['a'] / t['b']:.3f}   "
        f"(first epoch, compiling included: a {first['a']:.1f}s, f {first['f']:.1f}s)",
        flush=True,
    )
    return t


def whole_run_seconds(which: str, x, config, epochs, device, step: str | None = None) -> dict:
    """Seconds of one whole run of ``epochs`` epochs in this process (from building the program on: the checks,
    recording and compiling included):
    ``default`` is ``fit``'s default (``--compile auto``: the step the rule takes for this many steps, or the
    kind ``step`` forces), ``best`` the best loop (f)."""
    pyro.set_rng_seed(0)
    program = build_program(config, x.shape[1], (x.shape[1],)).to(device)
    start = time.perf_counter()
    if which == "default":
        train = copy.deepcopy(config.train)
        train.epochs = epochs
        trainer = Trainer(program, train, x, x[:2], progress=False, step_kind=step)
        trainer.fit()
        step = trainer.step_kind if step is None else f"forced {step}"
    else:
        best_opt = torch.optim.Adam(program.parameters(), lr=config.train.lr, fused=True)
        best_loss = torch.compile(lambda xb, scale: hand_loss(program, config, xb, scale), dynamic=False)
        for epoch in range(epochs):
            hand_epoch(best_loss, best_opt, x, config, epoch)
        step = "f"
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "step": step}


def whole_run(name, likelihood, epochs, rounds, argv) -> None:
    """Whole runs of ``fit``'s default against the best loop (f), each in a fresh process with an empty
    TorchInductor cache of its own, as a user's run starts: each pays its own imports, recording, the
    compiler's start-up and its kernels. ``rounds`` alternate which goes first; medians are printed."""
    times = {"default": [], "best": []}
    step = ""
    for r in range(rounds):
        for which in ("default", "best") if r % 2 == 0 else ("best", "default"):
            with tempfile.TemporaryDirectory() as cache:
                args = [*argv, f"--worker={which}", f"--case={name}", f"--likelihood={likelihood}"]
                result = run_worker(__file__, args, env={"TORCHINDUCTOR_CACHE_DIR": cache})
            times[which].append(result["seconds"] / epochs)
            step = result["step"] if which == "default" else step
    t_default, t_best = median(times["default"]), median(times["best"])
    print(
        f"{name} {likelihood:9s} whole run of {epochs} epochs, fresh processes, empty caches, median of {rounds}: "
        f"default ({step} step) {t_default * 1e3:7.2f} ms/epoch  f {t_best * 1e3:7.2f} ms/epoch   "
        f"default/f = {t_default / t_best:.3f}",
        flush=True,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=count, default=5, help="timed epochs per method (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--only", choices=["mnist", "digits"], help="run one data set")
    p.add_argument(
        "--whole-run",
        type=count,
        metavar="EPOCHS",
        help="time whole runs of EPOCHS epochs instead (fit's default against (f), compiling included)",
    )
    p.add_argument("--rounds", type=count, default=3, help="whole runs of each, order alternating (median)")
    p.add_argument(
        "--step",
        choices=["eager", "replayed", "compiled"],
        help="with --whole-run: the step the default's run takes, forced, instead of the rule's",
    )
    p.add_argument("--worker", choices=["default", "best"], help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--likelihood", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.step or args.worker) and args.whole_run is None:
        p.error("--step forces the default's step of a whole run: give --whole-run EPOCHS too")
    if args.worker and not (args.case and args.likelihood):
        p.error("a --worker runs one case: give --case and --likelihood too")
    torch.set_num_threads(torch.get_num_threads())
    if args.smoke:
        args.epochs = 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"train_speed.py: --device {args.device} asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    timed = f"median seconds per epoch over {args.epochs} epochs" if args.whole_run is None else "whole runs"
    if args.worker is None:
        print(f"{timed} (torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device})")
    digits = load_data(DataConfig()).train.to(args.device)
    cases = []
    if args.smoke:
        cases = [("digits-smoke", digits[:256], 16, 2, 64)]
    else:
        # a worker loads only its own case's data
        wanted = args.only != "digits" and (args.worker is None or args.case.startswith("mnist"))
        x_mnist = mnist(None, "x_train") if wanted else None
        if x_mnist is None and args.only != "digits" and args.worker is None:
            print("MNIST not found in ../shared/data: skipping the MNIST rows")
        if x_mnist is not None:
            cases.append(("mnist 784-400-50 b256", x_mnist.to(args.device), 400, 50, 256))
        if args.only != "mnist":
            cases.append(("digits 64-256-8 b128", digits, 256, 8, 128))
    if args.smoke:
        args.rounds = 1
    for name, x, hidden, latent, batch in cases:
        for likelihood in ("normal",) if args.smoke else ("normal", "bernoulli"):  # the smoke run: every method once
            config = make_config(likelihood, hidden, latent, batch, args.device)
            if args.worker is not None:
                if (name, likelihood) == (args.case, args.likelihood):
                    print(json.dumps(whole_run_seconds(args.worker, x, config, args.whole_run, args.device, args.step)))
            elif args.whole_run is not None:
                whole_run(name, likelihood, args.whole_run, args.rounds, argv if argv is not None else sys.argv[1:])
            else:
                bench(f"{name} {likelihood}", x, config, args.epochs, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
