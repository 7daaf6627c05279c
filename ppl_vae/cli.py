"""The command line: ``ppl-vae fit | sample | evaluate | compare | sigma-sweep``.

Every config option is a flag, generated from its field in :mod:`ppl_vae.config` (one
definition: default, help, range, registry). A TOML file given with ``--config`` sets the same
keys, and flags override it. User errors print one line and exit with status 2; an interrupt
exits with 130 after a checkpoint; SIGTERM outside training prints one line and exits with 143,
leaving nothing half-written.

Layer 5 — may import everything; heavy modules are imported inside the commands.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STARTING = b"ppl-vae: interrupted while starting; nothing was written\n"


def _end_while_starting(signum, frame):
    """SIGINT before any work: one line and exit 130 at once. Raising instead could land inside torch's C++
    import callbacks, where a Python exception aborts the process (SIGABRT) rather than unwinding."""
    os.write(2, STARTING)
    os._exit(128 + signum)


try:  # a few pure-Python modules (torch comes later, in _start): a KeyboardInterrupt here unwinds cleanly
    from .config import (
        SECTIONS,
        Config,
        EvalConfig,
        ExecutorConfig,
        SampleConfig,
        StudyConfig,
        flag_of,
        load_config,
        options_of,
        parse_text,
    )
except KeyboardInterrupt:
    os.write(2, STARTING)
    raise SystemExit(130) from None
from .errors import UserError, bounded

__all__ = ["main", "build_parser", "config_from_args", "overrides_from_args", "one_line"]


def one_line(message: str) -> str:
    """The message on one printable line of bounded length: control and line-break characters escaped."""
    return bounded("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # "--ove" must not mean --overwrite
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")

    def parse_args(self, args=None, namespace=None):
        """Parse; an unknown flag is refused with the nearest flag of the command it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._near_miss(parsed, extras)}")
        return parsed

    def _near_miss(self, parsed: argparse.Namespace, extras: list[str]) -> str:
        parser = self
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                parser = action.choices.get(getattr(parsed, action.dest, None), self)
        flags = [flag for action in parser._actions for flag in action.option_strings]
        for extra in extras:
            if extra.startswith("--"):
                close = difflib.get_close_matches(extra.split("=")[0][:200], flags, n=1, cutoff=0.6)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""


def _metavar(kind: type, opt) -> str:
    """The placeholder of a flag's value in ``--help``: N, FLOAT, NAME or PATH."""
    if kind is int:
        return "N"
    if kind is float:
        return "FLOAT"
    if opt.also in ("data-file", "program") or opt.names is None and opt.also != "count":
        return "PATH" if opt.also in ("data-file", "program") or "folder" in opt.help or "file" in opt.help else "TEXT"
    return "N|all" if opt.also == "count" else "NAME"


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
        choices = f"; one of: {', '.join(opt.names())}" if opt.names is not None and not opt.switch else ""
        help_ = f"{opt.help}{choices} (default: {default!r})"
        if opt.switch:
            group.add_argument(
                flag,
                dest=dest,
                nargs="?",
                const="on",
                choices=opt.names(),
                metavar="auto|on|off",
                default=argparse.SUPPRESS,
                help=help_,
            )
            group.add_argument(
                "--no-" + flag[2:],
                dest=dest,
                action="store_const",
                const="off",
                default=argparse.SUPPRESS,
                help=f"the same as {flag} off",
            )
        elif kind is bool:
            group.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_
            )
        else:
            group.add_argument(
                flag,
                dest=dest,
                type=_typed(kind, flag),
                metavar=_metavar(kind, opt),
                default=argparse.SUPPRESS,
                help=help_,
            )


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


def _section_from_args(args: argparse.Namespace, section: str, cls: type):
    return cls(**overrides_from_args(args, [section]).get(section, {})).validate()


TRUST_HELP = "import the program stored in the run (it is code: only for runs you trust; its sha256 is checked)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ppl-vae", description="Variational autoencoders as Pyro programs, with a Bayesian-workflow bench."
    )
    parser.add_argument("--version", action="version", version=f"ppl-vae {_version()}")
    verbosity = _Parser(add_help=False)  # every command's -q/-v
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="only errors and warnings: no progress, no per-epoch lines"
    )
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also the bench's debugging messages")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("fit", parents=[verbosity], help="train a model/guide pair and write a run directory")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint; takes only --epochs (to extend it), --trust-program "
        "and --no-progress besides",
    )
    p.add_argument("--trust-program", action="store_true", help=f"with --resume: {TRUST_HELP}")
    p.add_argument("--distributed", action="store_true", help="data-parallel over the processes torchrun starts (DDP)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_options(p)

    p = sub.add_parser(
        "evaluate", parents=[verbosity], help="Bayesian-workflow analysis of a trained run (writes evaluation.json)"
    )
    p.add_argument("run_dir")
    p.add_argument("--data", help="evaluate on another data set (name or path); default: the run's test split")
    p.add_argument("--data-root", default="", help="folder or file holding that data set")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    p.add_argument("--trust-program", action="store_true", help=TRUST_HELP)
    p.add_argument("--no-progress", action="store_true")
    _add_options(p, "evaluate", EvalConfig)

    p = sub.add_parser(
        "sigma-sweep",
        parents=[verbosity],
        help="train the fixed-σ model at several σ and compare rate, distortion, identity",
    )
    p.add_argument("--sigmas", default="0.03,0.05,0.1,0.2,0.4", help="comma-separated σ values")
    p.add_argument("--out", required=True, help="directory for the sweep (new, empty, or a sweep to continue)")
    p.add_argument("--overwrite", action="store_true", help="train again the runs in --out whose config changed")
    p.add_argument("--no-progress", action="store_true")
    _add_config_options(p)
    _add_options(p, "evaluate", EvalConfig)
    _add_options(p, "executor", ExecutorConfig)

    p = sub.add_parser(
        "compare", parents=[verbosity], help="train and evaluate variants on equal terms, ranked by held-out log p(x)"
    )
    p.add_argument(
        "--variants", nargs="*", default=[], metavar="FILE.toml", help="one TOML file a variant (its stem names it)"
    )
    p.add_argument(
        "--grid", default="", help="e.g. 'guide=diagonal,iaf;prior=standard,vamp' (any option: flag or section.key)"
    )
    p.add_argument(
        "--out", required=True, help="directory for the comparison (new, empty, or a comparison to continue)"
    )
    p.add_argument("--overwrite", action="store_true", help="train again the runs in --out whose config changed")
    p.add_argument("--no-progress", action="store_true")
    _add_config_options(p)
    _add_options(p, "evaluate", EvalConfig)
    _add_options(p, "study", StudyConfig)
    _add_options(p, "executor", ExecutorConfig)

    p = sub.add_parser("sample", parents=[verbosity], help="decode draws z ~ p(z) of a trained run into an image grid")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    p.add_argument("--trust-program", action="store_true", help=TRUST_HELP)
    _add_options(p, "sample", SampleConfig)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppl_vae")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown (not installed)"


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The bench's messages (the ``ppl_vae`` logger), one line each: what it is doing (the step it takes,
    a line per epoch where no bar is drawn) on stdout, warnings on stderr — so stderr carries only what
    went wrong, and an error is the one line there. ``-q`` keeps the warnings only, ``-v`` adds the
    debugging messages. A library user routes or silences them with the standard ``logging`` module."""
    logger = logging.getLogger("ppl_vae")
    for handler in [h for h in logger.handlers if getattr(h, "_ppl_vae_cli", False)]:
        logger.removeHandler(handler)
    narrative, problems = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    narrative.addFilter(lambda record: record.levelno < logging.WARNING)
    problems.setLevel(logging.WARNING)
    for handler in (narrative, problems):
        handler.setFormatter(logging.Formatter("ppl-vae: %(message)s"))
        handler._ppl_vae_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _progress(args) -> bool:
    """Progress bars only on a terminal (a redirected stderr gets a plain line per epoch), never with -q."""
    return not (getattr(args, "no_progress", False) or args.quiet) and sys.stderr.isatty()


def _resume_config(args) -> Config | None:
    """The config a resume runs with: the run's own, with ``--epochs`` applied; any other option refused."""
    from .runs.resume import RESUMABLE
    from .runs.schema import read_run_config

    given = {f"{s}.{n}": v for s, values in overrides_from_args(args).items() for n, v in values.items()}
    flags = {f"{s}.{n}": flag_of(n, o) for s, cls in SECTIONS.items() for n, _, o in options_of(cls)}
    refused = [flags[k] for k in given if k not in RESUMABLE]
    refused += [flag for flag, on in (("--config", args.config), ("--overwrite", args.overwrite)) if on]
    if args.distributed:
        refused.append("--distributed")
    if refused:
        allowed = ", ".join(flags[k] for k in RESUMABLE)
        raise UserError(
            f"--resume continues {args.resume} with its own settings: it takes {allowed} (to extend the run), "
            f"--trust-program and --no-progress, not {', '.join(refused)}"
        )
    if not given:
        return None
    config = read_run_config(args.resume)
    config.train.epochs = given["train.epochs"]
    return config


def _fit(args) -> int:
    from .runs.fit import fit

    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise UserError("--resume continues a run in place; leave out --out or give the same directory")
        config = _resume_config(args)
        run = fit(config, args.resume, resume=True, progress=_progress(args), trust_program=args.trust_program)
        if run.note == "finished":
            print(
                f"{run.path} has already trained its {run.checkpoint['epoch']} epochs; nothing to do "
                f"(extend it with --resume {run.path} --epochs N)"
            )
            return 0
    else:
        if not args.out:
            raise UserError("fit needs --out RUN_DIR")
        config = config_from_args(args)
        run = fit(config, args.out, overwrite=args.overwrite, progress=_progress(args), distributed=args.distributed)
        if not run.metrics:  # a rank other than 0: rank 0 reports
            return 0
    m = run.metrics
    print(
        f"trained {m['epochs']} epochs in {m['seconds']:.1f}s: test ELBO {m['test_elbo']:.2f} nats/datapoint "
        f"(training objective {m['train_objective']:.2f}) -> {run.path}"
    )
    return 0


def _check_png_out(text: str) -> Path:
    """``--out`` of ``sample``: a .png path that can be written, and no other kind of file it would replace."""
    from .storage.atomic import check_writable, open_regular

    out = Path(text)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {text}")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    if out.exists():
        with open_regular(out, "--out") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                raise UserError(f"--out {out} exists and is not a PNG image; it is kept: choose another --out")
    folder = out.parent
    while not folder.exists():  # the folders atomic_path would create: their first existing ancestor
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--out {out}: {folder} is not a directory")
    check_writable(folder)
    return out


def _sample(args) -> int:
    import pyro

    from .plots.figures import plot_images
    from .runs.load import load

    options = _section_from_args(args, "sample", SampleConfig)
    out = _check_png_out(args.out)
    run = load(args.run_dir, device=args.device, trust_program=args.trust_program)
    pyro.set_rng_seed(options.seed)
    samples = run.sample(options.n)
    if samples is None:
        raise UserError(
            f"{args.run_dir}: no observed site of the model holds x or some of its columns, so its draws are not "
            "images of the data; draw the model's sites with pyro.infer.Predictive(run.program.model, ...)"
        )
    plot_images(samples, run.image_shape, out)
    print(f"wrote {options.n} samples to {out}")
    return 0


def _evaluate(args) -> int:
    from dataclasses import replace

    from .data.datasets import load_data
    from .runs.evaluation import evaluate_run
    from .runs.load import load

    config = eval_config_from_args(args)
    run = load(args.run_dir, device=args.device, trust_program=args.trust_program)
    x = labels = None
    if args.data:
        other = load_data(replace(run.config.data, name=args.data, root=args.data_root, limit=0, labels="0"))
        if other.data_dim != run.dataset().data_dim:
            raise UserError(
                f"{args.data} has {other.data_dim} values a row; the run was trained on {run.dataset().data_dim}"
            )
        x, labels = other.test, other.test_labels
    r = evaluate_run(run, config, x=x, progress=_progress(args), labels=labels, data_name=args.data or None)
    number = lambda key, spec: "skipped" if r.get(key) is None else format(r[key], spec)
    accuracy = f"accuracy {r['accuracy']:.4f}, " if "accuracy" in r else ""
    print(
        f"log p(x) {r['log_px']:.2f} ± {r['log_px_se']:.2f}, ELBO {r['elbo']:.2f}, KL {r['kl']:.2f}, {accuracy}"
        f"k̂ mean {r['khat_mean']:.2f} ({r['khat_frac_gt_0_7']:.0%} > 0.7), active units {r['active_units']}, "
        f"gaps: approximation {number('approximation_gap', '.2f')}, amortization {number('amortization_gap', '.2f')}, "
        f"SBC p {number('sbc_pvalue', '.2g')} -> {run.path}/evaluation/"
    )
    return 0


def _executor_from_args(args):
    from .studies.executors import make_executor

    e = _section_from_args(args, "executor", ExecutorConfig)
    return make_executor(e.executor, e.jobs, e.address, e.cpus_per_job, e.gpus_per_job)


def _sigma_sweep(args) -> int:
    from .studies.sweep import parse_sigmas, sigma_sweep, sweep_table

    sigmas = parse_sigmas(args.sigmas)
    rows = sigma_sweep(
        sigmas,
        config_from_args(args),
        args.out,
        eval_config_from_args(args),
        progress=_progress(args),
        overwrite=args.overwrite,
        executor=_executor_from_args(args),
    )
    print(sweep_table(rows), end="")
    print(f"-> {args.out}/sweep.md, {args.out}/figures/")
    return 0


def _compare(args) -> int:
    from .studies.compare import compare, variants_from

    base = config_from_args(args)
    overrides = overrides_from_args(args)
    variants = variants_from(base, args.variants, args.grid, lambda config: apply_overrides(config, overrides))
    study = _section_from_args(args, "study", StudyConfig)
    comparison = compare(
        variants,
        args.out,
        eval_config_from_args(args),
        seeds=study.seeds,
        equivalence=study.equivalence,
        progress=_progress(args),
        overwrite=args.overwrite,
        executor=_executor_from_args(args),
    )
    print(comparison.to_markdown(), end="")
    print(f"-> {args.out}/comparison.md, comparison.csv, comparison.json, figures/")
    return 0


COMMANDS = {"fit": _fit, "evaluate": _evaluate, "compare": _compare, "sigma-sweep": _sigma_sweep, "sample": _sample}


AFTER_INTERRUPT = {
    "fit": "a checkpoint was saved, continue with --resume",
    "compare": "a checkpoint was saved; rerun the same command to continue (finished variants are reused)",
    "sigma-sweep": "a checkpoint was saved; rerun the same command to continue (finished runs are reused)",
}
AFTER_TERMINATE = {
    "fit": "what was written is whole: a started run continues with --resume, an unstarted one left nothing",
    "evaluate": "the run's previous evaluation is unchanged",
    "compare": "what was written is whole; rerun the same command to continue (finished variants are reused)",
    "sigma-sweep": "what was written is whole; rerun the same command to continue (finished runs are reused)",
    "sample": "nothing was written",
}


class Terminated(BaseException):
    """SIGTERM arrived outside training: unwind (every writer cleans up on the way) and exit 143."""


def _terminate(signum, frame):
    raise Terminated


def _interrupt_of(err: BaseException):
    """``err`` as the trainer's :class:`~ppl_vae.inference.trainer.Interrupted`, if it is one (and the trainer,
    with torch, was imported at all: an interrupt before that is a ``KeyboardInterrupt``)."""
    trainer = sys.modules.get("ppl_vae.inference.trainer")
    return err if trainer is not None and isinstance(err, trainer.Interrupted) else None


def _printable_streams() -> None:
    """A path or name the terminal's encoding cannot show is escaped, not a ``UnicodeEncodeError`` after the work."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _start() -> None:
    """Import torch, Pyro and the runs (seconds, and nothing written) while a Ctrl-C still ends the process
    at once; from here on it is a ``KeyboardInterrupt`` that every writer and the trainer clean up after."""
    from .inference.compiled import kept_cache
    from .runs import fit  # noqa: F401  (torch, pyro, the registries and the writers)

    kept_cache()  # TorchInductor's cache folder: the user's, or a TORCHINDUCTOR_CACHE_DIR checked in one line
    if signal.getsignal(signal.SIGINT) is _end_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(argv: Sequence[str] | None) -> int:
    handle = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handle else None
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        configure_logging(args.quiet, args.verbose)
        _start()
        return COMMANDS[command](args)
    except UserError as err:
        print(f"ppl-vae: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Terminated:
        after = AFTER_TERMINATE.get(command, "nothing was written")
        print(f"ppl-vae: terminated by signal {int(signal.SIGTERM)}; {after}", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        print("ppl-vae: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "ppl-vae: error: out of memory; ask for less (fewer particles, points, draws or a smaller batch)",
            file=sys.stderr,
        )
        return 2
    except OSError as err:  # what the checks before the work could not foresee: one line, not a traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"ppl-vae: error: {one_line(err.strerror or err)}{where}", file=sys.stderr)
        return 2
    except BaseException as err:
        interrupt = _interrupt_of(err)
        if interrupt is None:
            raise
        after = "" if interrupt.forced else f"; {AFTER_INTERRUPT.get(command, 'stopped')}"
        resume = "; continue with --resume" if interrupt.forced and "is kept" in str(interrupt) else ""
        print(f"ppl-vae: {one_line(interrupt)}{after}{resume}", file=sys.stderr)
        return 128 + interrupt.signum
    finally:
        if handle:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. Called as the program (``argv`` None), it also ends the process once
    its outputs are on disk, even where a user's program left a thread running."""
    if argv is None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _end_while_starting)  # until _start has imported torch
    _printable_streams()
    code = _run(argv)
    if argv is None:
        lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
        # every file is written and closed; only a program's thread, or the teardown of modules a signal
        # cut off halfway through their import (torch's), could still keep or kill the process
        if code >= 128 or any(t.is_alive() for t in lingering):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
