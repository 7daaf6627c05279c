"""The VampPrior paper's comparison of priors, rerun with ppl_vae's built-in programs.

    python benchmarks/priors_table.py --epochs-mnist 100 --epochs-caltech 400 --resume
    python benchmarks/priors_table.py --smoke               # tiny sizes on digits (what the tests run)

Rows (Tomczak & Welling 2018, arXiv:1705.07120, Table 2's MLP rows): the one-layer VAE with the
standard prior, with the VampPrior, and the two-layer hierarchical VAE with the VampPrior on
z2; then a variant of our own, the same hierarchical VAE trained on the IWAE bound with three
particles (Burda et al. 2016, arXiv:1509.00519). Every row is built from the registries
(``network = "gated"``, ``stochastic_layers``, ``pseudo_inputs = "hardtanh"``, ``clip_logvar``)
and trained on equal terms: the paper's architecture (gated dense layers of 300 units, z = 40,
K = 500 pseudo-inputs initialised N(0.05, 0.01²) on MNIST and N(0.8, 0.01²) on Caltech,
log-variances in [-6, 2]), batch 100, Adam from 5e-4, linear KL warm-up, early stopping on the
validation ELBO with the best epoch kept. Data: dynamically binarized MNIST (50000 train,
the last 10000 training images for validation, the 10000 test images binarized once) and
Caltech 101 Silhouettes (its own 4100/2264/2307 split).

Each (data set, row) is one job in its own single-threaded process, at most ``--jobs`` at a
time, writing under ``--out``: the run directory (checkpoint every epoch, so ``--resume``
continues a job that died), then ``evaluation.json`` and ``log_px.npy`` (IWAE-``K`` on every
test image). A finished job is never redone. The table compares each row with the next on
the same test images: paired differences of the NLL with their standard errors.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Test log-likelihoods the literature reports for these rows, as NLL (nats, lower is better), with
# where each comes from. "unverified": remembered from the paper's Table 2; the copies of the paper
# these machines reach show its text, not its tables.
PAPER = {
    ("mnist", "standard"): (88.56, "quoted in the literature; not checked against the paper"),
    ("mnist", "vamp"): (85.57, "quoted in the literature; not checked against the paper"),
    ("mnist", "hvae-vamp"): (83.19, "quoted in the literature; not checked against the paper"),
    ("caltech101", "standard"): (123.43, "unverified"),
    ("caltech101", "vamp"): (108.28, "unverified (a third-party summary quotes 108.28 without its row)"),
    ("caltech101", "hvae-vamp"): (104.68, "unverified"),
}

ROWS = {
    "standard": {"model.prior": "standard"},
    "vamp": {"model.prior": "vamp"},
    "hvae-vamp": {"model.prior": "vamp", "model.stochastic_layers": 2},
    # ours: the same hierarchical VAE, trained on the IWAE bound with 3 particles
    "hvae-vamp-iwae3": {
        "model.prior": "vamp",
        "model.stochastic_layers": 2,
        "train.elbo": "iwae",
        "train.particles": 3,
    },
}
LABELS = {
    "standard": "VAE, standard prior",
    "vamp": "VAE, VampPrior",
    "hvae-vamp": "HVAE (2 layers), VampPrior",
    "hvae-vamp-iwae3": "HVAE, VampPrior, IWAE-3 training (ours)",
}
DATA = {
    "mnist": {"data.name": "mnist", "data.binarize": True, "data.validation": 10000},
    "caltech101": {"data.name": "caltech101"},
}
SUBDIR = {"mnist": "mnist", "caltech101": "caltech101_silhouettes"}
EVAL_BLOCK = 500  # test images evaluated (and saved) at a time

# The training protocols. "ours": the protocol this table was first run with. "paper": the authors'
# code (github jmtomczak/vae_vampprior): β = epoch/100 capped at 1 whatever the budget, Adam at a
# constant 5e-4 on per-tensor normalised gradients, early stopping with patience 50 that never stops
# before epoch 151, every linear layer He-normal, pseudo-inputs N(0.05, 0.01²) on MNIST and
# N(0.5, 0.02²) on Caltech 101. Each difference is one entry of DIFFERENCES, so an ablation row is
# "ours" with one of them switched to the paper's.
DIFFERENCES = {
    "warmup": lambda data, epochs: {"train.anneal_epochs": 100},
    "constant-lr": lambda data, epochs: {"train.lr_schedule": "constant"},
    "min-epochs": lambda data, epochs: {"train.min_epochs": 151},
    "adamnormgrad": lambda data, epochs: {"train.optimizer": "adamnormgrad"},
    "he-init": lambda data, epochs: {"model.init": "he"},
    "pseudo-init": lambda data, epochs: (
        {"model.pseudo_mean": 0.05, "model.pseudo_std": 0.01}
        if data == "mnist"
        else {"model.pseudo_mean": 0.5, "model.pseudo_std": 0.02}
    ),
}


def ours(data: str, epochs: int, warmup_fraction: float) -> dict:
    """The first protocol: warm-up over a share of the budget, a cosine schedule, Adam, default init."""
    return {
        "train.lr_schedule": "cosine",
        "train.anneal_epochs": max(1, round(epochs * warmup_fraction)),
        "train.optimizer": "adam",
        "model.init": "default",
        "model.pseudo_mean": 0.05 if data == "mnist" else 0.8,
        "model.pseudo_std": 0.01,
    }


def protocol(name: str, data: str, epochs: int, warmup_fraction: float) -> dict:
    """The settings of protocol ``name``: ``ours``, ``paper``, or ``ours+DIFFERENCE`` (one paper setting)."""
    base, _, switch = name.partition("+")
    settings = ours(data, epochs, warmup_fraction)
    for key in DIFFERENCES if base == "paper" else [switch] if switch else []:
        settings.update(DIFFERENCES[key](data, epochs))
    return settings


PROTOCOLS = ["ours", "paper", *(f"ours+{key}" for key in DIFFERENCES)]


def config(data: str, row: str, args: argparse.Namespace, proto: str | None = None):
    """The config of one (data set, row): the paper's architecture, ``proto``'s protocol, ``args``' budget."""
    from ppl_vae.config import Config, set_value

    c = Config()
    epochs = args.epochs_mnist if data == "mnist" else args.epochs_caltech
    common = {
        "data.root": str(Path(args.data_root) / SUBDIR[data]),
        "model.likelihood": "bernoulli",
        "model.network": "gated",
        "model.hidden_dim": 300,
        "model.hidden_layers": 2,
        "model.latent_dim": 40,
        "model.n_components": 500,
        "model.pseudo_inputs": "hardtanh",
        "model.clip_logvar": True,
        "train.epochs": epochs,
        "train.batch_size": 100,
        "train.lr": 5e-4,
        "train.lr_final": 0.0,
        "train.anneal": "linear",
        "train.patience": args.patience,
        "train.checkpoint_every": 1 if data == "mnist" else 5,  # Caltech's epochs take seconds
        "train.seed": args.seed,
        **protocol(proto or args.protocol, data, epochs, args.warmup_fraction),
    }
    if args.smoke:  # tiny networks on the embedded digits data, binarized
        common.update({"model.hidden_dim": 16, "model.latent_dim": 4, "model.n_components": 10})
    for key, value in {**common, **(SMOKE_DATA if args.smoke else DATA[data]), **ROWS[row]}.items():
        set_value(c, key, value)
    return c.validate()


SMOKE_DATA = {"data.name": "digits", "data.binarize": True, "data.validation": 200}


def job(data: str, row: str, proto: str, args: argparse.Namespace) -> dict:
    """Train (or resume, or load) one row on one data set under ``proto``, then evaluate it on the test images."""
    import pyro
    import torch

    from ppl_vae.data.datasets import load_data
    from ppl_vae.diagnostics.estimators import importance_sample
    from ppl_vae.diagnostics.statistics import mean_se
    from ppl_vae.runs.fit import fit
    from ppl_vae.runs.load import load

    torch.set_num_threads(1)
    out = job_dir(args, data, row, proto)  # the benchmark's own files, beside the run (which holds only its own)
    run_dir = out / "run"
    done = out / "evaluation.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = config(data, row, args, proto)
    start = time.perf_counter()
    if (run_dir / "metrics.json").is_file():  # trained; its evaluation did not finish
        run = load(run_dir)
    else:
        resume = args.resume and (run_dir / "checkpoint" / "state.json").is_file()
        out.mkdir(parents=True, exist_ok=True)
        run = fit(cfg, run_dir, overwrite=not resume, resume=resume, progress=False)
    train_seconds = time.perf_counter() - start
    test = load_data(cfg.data).test
    # the test images in one fixed random order, in blocks, each from its own seed and saved as it
    # finishes: an evaluation that dies resumes at its first missing block and ends with the numbers an
    # uninterrupted one gives, and --test-points N (the first N of that order) is a random subset
    order = np.random.default_rng(0).permutation(len(test))[: args.test_points or None]
    start = time.perf_counter()
    run.program.eval()
    blocks = []
    for i, first in enumerate(range(0, len(order), EVAL_BLOCK)):
        path = out / f"eval-block-{i:03d}.npz"
        if not path.is_file():
            pyro.set_rng_seed(args.seed * 100_003 + i)
            rows = torch.from_numpy(order[first : first + EVAL_BLOCK])
            est = importance_sample(run.program.model, run.program.guide, test[rows], args.k)
            np.savez(path.with_suffix(".tmp.npz"), log_px=est.log_px.numpy(), elbo=est.elbo.numpy(), kl=est.kl.numpy())
            os.replace(path.with_suffix(".tmp.npz"), path)
        with np.load(path) as f:
            blocks.append({key: f[key] for key in f.files})
    log_px = np.concatenate([b["log_px"] for b in blocks])
    np.save(out / "log_px.npy", log_px)
    nll, nll_se = mean_se(-log_px)
    history = run.history
    result = {
        "dataset": data,
        "row": row,
        "protocol": proto,
        "nll": nll,
        "se": nll_se,
        "neg_elbo": -float(np.concatenate([b["elbo"] for b in blocks]).mean()),
        "kl": float(np.concatenate([b["kl"] for b in blocks]).mean()),
        "k": args.k,
        "test_points": len(order),
        "epochs": len(history),
        "epoch_budget": cfg.train.epochs,
        "best_epoch": run.metrics.get("best_epoch"),
        "train_seconds": sum(r["seconds"] for r in history) if history else train_seconds,
        "eval_seconds": time.perf_counter() - start,
        # the learning curve: validation ELBO (β = 1) and β at every epoch
        "curve": [{"epoch": r["epoch"], "val_elbo": r.get("val_elbo"), "beta": r["beta"]} for r in history],
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, done)
    print(f"{data:10s} {row:10s} {proto:20s} NLL {nll:.2f} ± {nll_se:.2f}  ({result['epochs']} epochs)", flush=True)
    return result


def job_dir(args: argparse.Namespace, data: str, row: str, proto: str) -> Path:
    return Path(args.out) / proto / data / row


def _job(spec):
    return job(*spec)


def _paired(args, data: str, a: tuple[str, str], b: tuple[str, str]) -> dict:
    """NLL(a) - NLL(b) on the same test images, with its paired SE: > 0 when ``b`` is better.

    Every job evaluates a prefix of one fixed order of the test images, so two jobs evaluated on
    different numbers of them are paired on the images both saw: the first ``points`` of the order.
    """
    from ppl_vae.diagnostics.statistics import paired_difference

    la = np.load(job_dir(args, data, *a) / "log_px.npy")
    lb = np.load(job_dir(args, data, *b) / "log_px.npy")
    n = min(len(la), len(lb))
    diff, se = paired_difference(lb[:n], la[:n])
    return {"delta_nll": diff, "se": se, "z": diff / se if se else None, "points": n}


def _cell(pair: dict) -> str:
    return (
        f"{pair['delta_nll']:+.2f} ± {pair['se']:.2f} ({pair['z']:+.1f})" if pair["se"] else f"{pair['delta_nll']:+.2f}"
    )


def table(results: dict, args: argparse.Namespace) -> tuple[str, dict]:
    """The markdown tables and the paired differences, per data set: the rows under the protocol, then the ablation."""
    lines, pairs = [], {}
    for data in args.data:
        rows = [r for r in args.rows if (data, r, args.protocol) in results]
        if not rows:
            continue
        first = results[(data, rows[0], args.protocol)]
        lines += [
            f"**{data}**, protocol `{args.protocol}`",
            "",
            f"| row | epochs run (best) | test NLL (IWAE-{args.k}, {first['test_points']} images) "
            "| −ELBO | paper | vs. previous row: ΔNLL ± SE (z) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        previous = None
        for row in rows:
            r = results[(data, row, args.protocol)]
            paper, source = PAPER.get((data, row), (None, ""))
            cell = "—"
            if previous is not None:
                pair = pairs[f"{data}: {previous} -> {row}"] = _paired(
                    args, data, (previous, args.protocol), (row, args.protocol)
                )
                cell = _cell(pair)
            paper_cell = "—" if paper is None else f"{paper:.2f} ({source})"
            lines.append(
                f"| {LABELS[row]} | {r['epochs']} ({r['best_epoch']}) | **{r['nll']:.2f} ± {r['se']:.2f}** "
                f"| {r['neg_elbo']:.2f} | {paper_cell} | {cell} |"
            )
            previous = row
        lines.append("")
        ablation = [p for p in args.ablation if (data, "vamp", p) in results]
        if "ours" in ablation and len(ablation) > 1:
            lines += [
                f"**{data}, VampPrior: from protocol `ours`, one of the paper's settings at a time**",
                "",
                "| protocol | epochs run (best) | test images | test NLL | gain over `ours` on the images both saw: "
                "ΔNLL ± SE (z) |",
                "| --- | --- | --- | --- | --- |",
            ]
            for proto in ablation:
                r = results[(data, "vamp", proto)]
                cell = "—"
                if proto != "ours":
                    pair = pairs[f"{data}: vamp ours -> {proto}"] = _paired(
                        args, data, ("vamp", "ours"), ("vamp", proto)
                    )
                    cell = _cell(pair)
                lines.append(
                    f"| `{proto}` | {r['epochs']} ({r['best_epoch']}) | {r['test_points']} "
                    f"| {r['nll']:.2f} ± {r['se']:.2f} | {cell} |"
                )
            lines.append("")
    return "\n".join(lines), pairs


def curves(results: dict, path: Path) -> None:
    """Validation ELBO against epoch (β dashed on a second axis), one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({key[0] for key in results})
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        twin = ax.twinx()
        for (d, row, proto), r in sorted(results.items()):
            if d != data or not r.get("curve"):
                continue
            epochs = [c["epoch"] for c in r["curve"]]
            val = [c["val_elbo"] for c in r["curve"]]
            (line,) = ax.plot(epochs, val, lw=1, label=f"{row} / {proto}")
            twin.plot(epochs, [c["beta"] for c in r["curve"]], ls="--", lw=0.8, color=line.get_color())
            if r.get("best_epoch"):
                ax.axvline(r["best_epoch"], color=line.get_color(), lw=0.5, alpha=0.5)
        finite = [c["val_elbo"] for (d, *_), r in results.items() if d == data for c in r.get("curve", [])[5:]]
        if finite:
            ax.set_ylim(np.percentile(finite, 2) - 2, max(finite) + 2)  # the first epochs would flatten the rest
        ax.set(title=f"{data}: validation ELBO (solid), β (dashed)", xlabel="epoch", ylabel="validation ELBO (nats)")
        twin.set_ylabel("β")
        twin.set_ylim(0, 1.05)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(value, indent=2))
    os.replace(path.with_suffix(".tmp"), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", default="ours", choices=PROTOCOLS, help="the training protocol of the table's rows")
    p.add_argument(
        "--ablation",
        nargs="*",
        default=[],
        choices=PROTOCOLS,
        help="also train the VampPrior row under these protocols (e.g. ours and every ours+DIFFERENCE)",
    )
    p.add_argument("--epochs-mnist", type=int, default=100)
    p.add_argument("--epochs-caltech", type=int, default=400)
    p.add_argument(
        "--warmup-fraction", type=float, default=0.2, help="protocol ours: KL warm-up, a share of the epochs"
    )
    p.add_argument("--patience", type=int, default=50, help="early-stopping patience in epochs (the paper's 50)")
    p.add_argument("--k", type=int, default=5000, help="importance samples of the test log-likelihood")
    p.add_argument("--test-points", type=int, default=0, help="evaluate N test images, a fixed random subset (0 = all)")
    p.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--jobs", type=int, default=2, help="jobs at once, each one process of one thread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "runs" / "priors-table"))
    p.add_argument("--results", default="", help="also write the rows here (benchmarks/results/priors_table.json)")
    p.add_argument("--resume", action="store_true", help="continue jobs from their checkpoints")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the embedded digits data")
    p.add_argument(
        "--collect", action="store_true", help="train nothing: write the table and results of the jobs already finished"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs_mnist = args.epochs_caltech = 1
        args.k, args.test_points, args.data, args.patience, args.jobs = 10, 50, ["mnist"], 1, 1
    elif not all((Path(args.data_root) / SUBDIR[d]).is_dir() for d in args.data):
        print(
            f"data not found under {args.data_root}; pass --data-root (the folder holding {', '.join(SUBDIR.values())})"
        )
        return 0
    # Caltech's cheap jobs first, then MNIST's from the cheapest: on a busy machine the table fills row by row
    specs = [(d, r, args.protocol, args) for d in reversed(args.data) for r in args.rows]
    specs += [(d, "vamp", proto, args) for d in reversed(args.data) for proto in args.ablation]
    specs = list({spec[:3]: spec for spec in specs}.values())  # a row asked for twice is one job
    if args.collect:
        done = [job_dir(args, *spec[:3]) / "evaluation.json" for spec in specs]
        finished = [json.loads(path.read_text()) for path in done if path.is_file()]
    elif args.jobs == 1:
        finished = [job(*s) for s in specs]
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            finished = list(pool.map(_job, specs))
    results = {(r["dataset"], r["row"], r["protocol"]): r for r in finished}
    text, pairs = table(results, args)
    print(text)
    rows = [{k: v for k, v in r.items() if k != "curve"} for r in results.values()]
    summary = {"rows": rows, "paired_differences": pairs, "args": {k: v for k, v in vars(args).items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "priors_table.json", summary)
    if args.results:  # the shared results file: this invocation's rows replace their earlier versions, others stay
        path = Path(args.results)
        earlier = json.loads(path.read_text()) if path.is_file() else {"rows": [], "paired_differences": {}}
        key = lambda r: (r["dataset"], r["row"], r["protocol"])
        mine = {key(r) for r in rows}
        summary = {
            "rows": [r for r in earlier["rows"] if key(r) not in mine] + rows,
            "paired_differences": {**earlier["paired_differences"], **pairs},
        }
        _write_json(path, summary)
    (out / "table.md").write_text(text)
    curves(results, out / "curves.png")
    if args.results:  # the learning curves beside the results file, where BENCHMARKS.md shows them
        curves(results, Path(args.results).with_name("priors_curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
