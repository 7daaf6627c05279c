"""The command line: ``ppl-vae fit | sample | evaluate | compare | sigma-sweep``.

Every option of the config dataclasses has one flag, declared once in :data:`OPTIONS`; a
TOML file given with ``--config`` sets the same keys, and flags override it. User errors
print one line and exit with status 2; an interrupt exits with 130 after a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Config, load_config
from .errors import UserError

__all__ = ["main", "OPTIONS", "build_parser", "config_from_args"]

# flag -> (section, key, type, help); a flag given on the command line overrides the TOML file
OPTIONS: dict[str, tuple[str, str, type, str]] = {
    "--data": ("data", "name", str, "digits | mnist | fashion-mnist | frey | path to .npy/.npz"),
    "--data-root": ("data", "root", str, "folder or file holding the data set"),
    "--download": ("data", "download", bool, "let torchvision download MNIST-like data into --data-root"),
    "--limit": ("data", "limit", int, "keep only the first N training points"),
    "--binarize": ("data", "binarize", bool, "dynamic binarization x ~ Bernoulli(pixel)"),
    "--likelihood": ("model", "likelihood", str, "observation model p(x|z)"),
    "--sigma": ("model", "sigma", float, "σ of the Normal likelihood (fixed), or its initial value"),
    "--prior": ("model", "prior", str, "standard | mog | vamp | flow"),
    "--latent-dim": ("model", "latent_dim", int, "dimension L of z"),
    "--hidden-dim": ("model", "hidden_dim", int, "width of hidden layers"),
    "--hidden-layers": ("model", "hidden_layers", int, "hidden layers in each MLP"),
    "--network": ("model", "network", str, "mlp | conv"),
    "--components": ("model", "n_components", int, "mixture components / VampPrior pseudo-inputs"),
    "--prior-flows": ("model", "flows", int, "transforms in the flow prior"),
    "--model": ("model", "program", str, "a user's model program, path/to/file.py:factory"),
    "--guide": (
        "guide",
        "name",
        str,
        "diagonal | lowrank | iaf | naf | spline | planar | radial | householder | file.py:factory",
    ),
    "--flows": ("guide", "flows", int, "transforms in a flow guide"),
    "--rank": ("guide", "rank", int, "rank of the low-rank guide"),
    "--epochs": ("train", "epochs", int, "training epochs"),
    "--batch-size": ("train", "batch_size", int, "minibatch size"),
    "--lr": ("train", "lr", float, "Adam learning rate"),
    "--lr-schedule": ("train", "lr_schedule", str, "constant | cosine"),
    "--lr-final": ("train", "lr_final", float, "learning rate at the end of a cosine schedule"),
    "--seed": ("train", "seed", int, "random seed"),
    "--device": ("train", "device", str, "cpu | cuda"),
    "--elbo": ("train", "elbo", str, "trace | meanfield | iwae"),
    "--particles": ("train", "particles", int, "K particles of the ELBO (vectorized)"),
    "--beta": ("train", "beta", float, "weight β of the KL terms"),
    "--anneal": ("train", "anneal", str, "none | linear | cyclical"),
    "--anneal-epochs": ("train", "anneal_epochs", int, "warm-up (or cycle) length in epochs"),
    "--compile": (
        "train",
        "compile",
        bool,
        "record one training step as a tensor graph and replay it (faster small networks)",
    ),
    "--checkpoint-every": ("train", "checkpoint_every", int, "epochs between checkpoints"),
    "--checkpoint-steps": ("train", "checkpoint_steps", int, "also checkpoint every N steps"),
}


def one_line(message: str) -> str:
    """The message on one printable line: control and line-break characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # "--ove" must not mean --overwrite
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with [data], [model], [guide], [train] sections")
    for flag, (section, key, kind, help_) in OPTIONS.items():
        dest = f"opt_{section}_{key}"
        if kind is bool:
            p.add_argument(flag, dest=dest, action="store_true", default=None, help=help_)
        else:
            p.add_argument(flag, dest=dest, type=_typed(kind, flag), default=None, help=help_)


def _typed(kind: type, flag: str):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _add_workflow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=1000, help="importance samples per test point")
    p.add_argument("--points", type=int, default=0, help="evaluate only the first N test points (0 = all)")
    p.add_argument("--gap-points", type=int, default=100, help="test points whose guides are refined for the gaps")
    p.add_argument("--sbc-simulations", type=int, default=500, help="simulated (z, x) pairs for calibration")
    p.add_argument("--eval-seed", dest="eval_seed", type=int, default=0, help="seed of the evaluation draws")


def _workflow_config(args):
    from .runs.evaluation import WorkflowConfig

    return WorkflowConfig(
        k=args.k,
        points=args.points,
        gap_points=args.gap_points,
        sbc_simulations=args.sbc_simulations,
        seed=args.eval_seed,
    ).validate()


def config_from_args(args: argparse.Namespace) -> Config:
    """The TOML file (if any) with every flag given on the command line applied on top."""
    config = load_config(args.config) if getattr(args, "config", None) else Config()
    explicit_overrides(args)(config)
    return config.validate()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ppl-vae", description="Variational autoencoders as Pyro programs, with a Bayesian-workflow bench."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("fit", help="train a model/guide pair and write a run directory")
    _add_config_options(p)
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--distributed", action="store_true", help="data-parallel over the processes torchrun starts (DDP)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("evaluate", help="Bayesian-workflow analysis of a trained run (writes evaluation.json)")
    p.add_argument("run_dir")
    _add_workflow_options(p)
    p.add_argument("--data", help="evaluate on another data set (name or path); default: the run's test split")
    p.add_argument("--data-root", default="", help="folder or file holding that data set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "sigma-sweep", help="train the fixed-σ model at several σ and compare rate, distortion, identity"
    )
    _add_config_options(p)
    p.add_argument("--sigmas", default="0.03,0.05,0.1,0.2,0.4", help="comma-separated σ values")
    _add_workflow_options(p)
    p.add_argument("--out", required=True, help="directory for the sweep")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("compare", help="train and evaluate variants on equal terms, ranked by held-out log p(x)")
    _add_config_options(p)
    p.add_argument(
        "--variants", nargs="*", default=[], metavar="FILE.toml", help="one TOML file a variant (name = file stem)"
    )
    p.add_argument("--grid", default="", help="e.g. 'guide=diagonal,iaf;prior=standard,vamp'")
    p.add_argument("--seeds", type=int, default=1, help="train every variant with this many seeds")
    _add_workflow_options(p)
    p.add_argument("--out", required=True, help="directory for the comparison (finished runs in it are reused)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("sample", help="decode draws z ~ p(z) of a trained run into an image grid")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--device", default="cpu")
    return parser


def _fit(args) -> int:
    from .runs.run import fit

    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise UserError("--resume continues a run in place; leave out --out or give the same directory")
        run = fit(Config(), args.resume, resume=True, progress=not args.no_progress)
    else:
        if not args.out:
            raise UserError("fit needs --out RUN_DIR")
        run = fit(
            config_from_args(args),
            args.out,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            distributed=args.distributed,
        )
        if not run.metrics:  # a rank other than 0: rank 0 reports
            return 0
    m = run.metrics
    print(
        f"trained {m['epochs']} epochs in {m['seconds']:.1f}s: train ELBO {m['train_elbo']:.2f}, "
        f"test ELBO {m['test_elbo']:.2f} nats/datapoint -> {run.path}"
    )
    return 0


def _sample(args) -> int:
    import pyro

    from .plots.figures import plot_images
    from .runs.run import load

    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if not args.out.endswith(".png"):
        raise UserError(f"--out must name a .png file, got {args.out}")
    run = load(args.run_dir, device=args.device)
    pyro.set_rng_seed(args.seed)
    plot_images(run.sample(args.n), run.image_shape, args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _evaluate(args) -> int:
    from dataclasses import replace

    from .data.datasets import load_data
    from .runs.evaluation import evaluate_run
    from .runs.run import load

    config = _workflow_config(args)
    run = load(args.run_dir, device=args.device)
    x = None
    if args.data:
        other = load_data(replace(run.config.data, name=args.data, root=args.data_root, limit=0))
        if other.data_dim != run.dataset().data_dim:
            raise UserError(
                f"{args.data} has {other.data_dim} values a row; the run was trained on {run.dataset().data_dim}"
            )
        x = other.test
    r = evaluate_run(run, config, x=x, progress=not args.no_progress)
    print(
        f"log p(x) {r['log_px']:.2f} ± {r['log_px_se']:.2f}, ELBO {r['elbo']:.2f}, KL {r['kl']:.2f}, "
        f"k̂ mean {r['khat_mean']:.2f} ({r['khat_frac_gt_0_7']:.0%} > 0.7), active units {r['active_units']}, "
        f"gaps: approximation {r['approximation_gap']:.2f}, amortization {r['amortization_gap']:.2f}, "
        f"SBC p {r['sbc_pvalue']:.2g} -> {run.path}/evaluation.json"
    )
    return 0


def _sigma_sweep(args) -> int:
    from .studies.sweep import parse_sigmas, sigma_sweep, sweep_table

    sigmas = parse_sigmas(args.sigmas)
    rows = sigma_sweep(sigmas, config_from_args(args), args.out, _workflow_config(args), progress=not args.no_progress)
    print(sweep_table(rows), end="")
    print(f"-> {args.out}/sweep.md, {args.out}/figures/")
    return 0


def explicit_overrides(args):
    """A function applying the options given on the command line (the shared budget) to a config."""
    given = [
        (flag, spec) for flag, spec in OPTIONS.items() if getattr(args, f"opt_{spec[0]}_{spec[1]}", None) is not None
    ]

    def apply(config):
        for flag, (section, key, _, _) in given:
            value = getattr(args, f"opt_{section}_{key}")
            if flag == "--guide" and ".py:" in value:
                section, key = "guide", "program"
            setattr(getattr(config, section), key, value)

    return apply


def _compare(args) -> int:
    from .studies.compare import compare, variants_from

    base = config_from_args(args)
    variants = variants_from(base, args.variants, args.grid, explicit_overrides(args))
    comparison = compare(variants, args.out, _workflow_config(args), seeds=args.seeds, progress=not args.no_progress)
    print(comparison.to_markdown(), end="")
    print(f"-> {args.out}/comparison.md, comparison.csv, comparison.json, figures/")
    return 0


COMMANDS = {"fit": _fit, "evaluate": _evaluate, "compare": _compare, "sigma-sweep": _sigma_sweep, "sample": _sample}


def main(argv: Sequence[str] | None = None) -> int:
    from .inference.trainer import Interrupted

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"ppl-vae: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"ppl-vae: {err}; a checkpoint was saved, continue with --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("ppl-vae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
