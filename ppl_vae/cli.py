"""The command line: ``ppl-vae fit | sample | evaluate | compare | sigma-sweep``.

Every config option is a flag, generated from its field in :mod:`ppl_vae.config` (one
definition: default, help, range, registry). A TOML file given with ``--config`` sets the same
keys, and flags override it. User errors print one line and exit with status 2; an interrupt
exits with 130 after a checkpoint.

Layer 5 — may import everything; heavy modules are imported inside the commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import SECTIONS, Config, EvalConfig, flag_of, load_config, options_of, parse_text
from .errors import UserError

__all__ = ["main", "build_parser", "config_from_args", "overrides_from_args", "one_line"]


def one_line(message: str) -> str:
    """The message on one printable line: control and line-break characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # "--ove" must not mean --overwrite
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _typed(kind: type, flag: str):
    def parse(text: str):
        try:
            return parse_text(kind, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _add_options(p: argparse.ArgumentParser, section: str, cls: type) -> None:
    """One flag per field of ``cls``; a flag's value lands in ``args`` only when it is given."""
    group = p.add_argument_group(f"[{section}] options")
    for name, kind, opt in options_of(cls):
        flag, dest = flag_of(name, opt), f"{section}.{name}"
        default = getattr(cls(), name)
        help_ = f"{opt.help} (default: {default!r})"
        if opt.switch:
            group.add_argument(
                flag, dest=dest, nargs="?", const="on", choices=opt.names(), default=argparse.SUPPRESS, help=help_
            )
            group.add_argument(
                "--no-" + flag[2:], dest=dest, action="store_const", const="off", default=argparse.SUPPRESS
            )
        elif kind is bool:
            group.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_
            )
        else:
            group.add_argument(flag, dest=dest, type=_typed(kind, flag), default=argparse.SUPPRESS, help=help_)


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with [data], [model], [guide], [train] sections")
    for section, cls in SECTIONS.items():
        _add_options(p, section, cls)


def overrides_from_args(args: argparse.Namespace, section_names: Sequence[str] = tuple(SECTIONS)) -> dict[str, dict]:
    """The options given on the command line, as ``{section: {field: value}}``."""
    given: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        section, dot, name = dest.partition(".")
        if dot and section in section_names:
            given.setdefault(section, {})[name] = value
    return given


def apply_overrides(config: Config, overrides: dict[str, dict]) -> Config:
    """``config`` with the given options set on it (in place; returns it)."""
    for section, values in overrides.items():
        for name, value in values.items():
            setattr(getattr(config, section), name, value)
    return config


def config_from_args(args: argparse.Namespace) -> Config:
    """The TOML file (if any) with every flag given on the command line applied on top."""
    config = load_config(args.config) if getattr(args, "config", None) else Config()
    return apply_overrides(config, overrides_from_args(args)).validate()


def eval_config_from_args(args: argparse.Namespace) -> EvalConfig:
    config = EvalConfig(**overrides_from_args(args, ["evaluate"]).get("evaluate", {}))
    return config.validate()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ppl-vae", description="Variational autoencoders as Pyro programs, with a Bayesian-workflow bench."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("fit", help="train a model/guide pair and write a run directory")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--distributed", action="store_true", help="data-parallel over the processes torchrun starts (DDP)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_options(p)

    p = sub.add_parser("evaluate", help="Bayesian-workflow analysis of a trained run (writes evaluation.json)")
    p.add_argument("run_dir")
    p.add_argument("--data", help="evaluate on another data set (name or path); default: the run's test split")
    p.add_argument("--data-root", default="", help="folder or file holding that data set")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true")
    _add_options(p, "evaluate", EvalConfig)

    p = sub.add_parser(
        "sigma-sweep", help="train the fixed-σ model at several σ and compare rate, distortion, identity"
    )
    p.add_argument("--sigmas", default="0.03,0.05,0.1,0.2,0.4", help="comma-separated σ values")
    p.add_argument("--out", required=True, help="directory for the sweep")
    p.add_argument("--no-progress", action="store_true")
    _add_config_options(p)
    _add_options(p, "evaluate", EvalConfig)

    p = sub.add_parser("compare", help="train and evaluate variants on equal terms, ranked by held-out log p(x)")
    p.add_argument(
        "--variants", nargs="*", default=[], metavar="FILE.toml", help="one TOML file a variant (its stem names it)"
    )
    p.add_argument(
        "--grid", default="", help="e.g. 'guide=diagonal,iaf;prior=standard,vamp' (any option: flag or section.key)"
    )
    p.add_argument("--seeds", type=int, default=1, help="train every variant with this many seeds")
    p.add_argument("--out", required=True, help="directory for the comparison (finished runs in it are reused)")
    p.add_argument("--no-progress", action="store_true")
    _add_config_options(p)
    _add_options(p, "evaluate", EvalConfig)

    p = sub.add_parser("sample", help="decode draws z ~ p(z) of a trained run into an image grid")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
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
        config = config_from_args(args)
        run = fit(
            config, args.out, overwrite=args.overwrite, progress=not args.no_progress, distributed=args.distributed
        )
        if not run.metrics:  # a rank other than 0: rank 0 reports
            return 0
    m = run.metrics
    print(
        f"trained {m['epochs']} epochs in {m['seconds']:.1f}s: test ELBO {m['test_elbo']:.2f} nats/datapoint "
        f"(training objective {m['train_objective']:.2f}) -> {run.path}"
    )
    return 0


def _sample(args) -> int:
    import pyro

    from .plots.figures import plot_images
    from .runs.run import load

    if not 1 <= args.n <= 10_000:
        raise UserError(f"--n must lie in [1, 10000], got {args.n}")
    if not 0 <= args.seed <= 2**32 - 1:
        raise UserError(f"--seed must lie in [0, 4294967295], got {args.seed}")
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

    config = eval_config_from_args(args)
    run = load(args.run_dir, device=args.device)
    x = labels = None
    if args.data:
        other = load_data(replace(run.config.data, name=args.data, root=args.data_root, limit=0, labels="0"))
        if other.data_dim != run.dataset().data_dim:
            raise UserError(
                f"{args.data} has {other.data_dim} values a row; the run was trained on {run.dataset().data_dim}"
            )
        x, labels = other.test, other.test_labels
    r = evaluate_run(run, config, x=x, progress=not args.no_progress, labels=labels)
    number = lambda key, spec: "skipped" if r.get(key) is None else format(r[key], spec)
    accuracy = f"accuracy {r['accuracy']:.4f}, " if "accuracy" in r else ""
    print(
        f"log p(x) {r['log_px']:.2f} ± {r['log_px_se']:.2f}, ELBO {r['elbo']:.2f}, KL {r['kl']:.2f}, {accuracy}"
        f"k̂ mean {r['khat_mean']:.2f} ({r['khat_frac_gt_0_7']:.0%} > 0.7), active units {r['active_units']}, "
        f"gaps: approximation {number('approximation_gap', '.2f')}, amortization {number('amortization_gap', '.2f')}, "
        f"SBC p {number('sbc_pvalue', '.2g')} -> {run.path}/evaluation.json"
    )
    return 0


def _sigma_sweep(args) -> int:
    from .studies.sweep import parse_sigmas, sigma_sweep, sweep_table

    sigmas = parse_sigmas(args.sigmas)
    rows = sigma_sweep(
        sigmas, config_from_args(args), args.out, eval_config_from_args(args), progress=not args.no_progress
    )
    print(sweep_table(rows), end="")
    print(f"-> {args.out}/sweep.md, {args.out}/figures/")
    return 0


def _compare(args) -> int:
    from .studies.compare import compare, variants_from

    base = config_from_args(args)
    overrides = overrides_from_args(args)
    variants = variants_from(base, args.variants, args.grid, lambda config: apply_overrides(config, overrides))
    comparison = compare(
        variants, args.out, eval_config_from_args(args), seeds=args.seeds, progress=not args.no_progress
    )
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
