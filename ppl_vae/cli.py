"""The command line: ``ppl-vae fit | sample | evaluate | compare | sigma-sweep``.

Every config option is a flag, generated from its field in :mod:`ppl_vae.config` (one
definition: default, help, range, registry) by :mod:`ppl_vae.flags`. A TOML file given with
``--config`` sets the same keys, and flags override it. This module runs the commands and owns
the process: signals, exit statuses, the one-line messages. User errors print one line and exit
with status 2; an interrupt exits with 130 after a checkpoint; SIGTERM outside training prints one
line and exits with 143, leaving nothing half-written.

Layer 5 — may import everything; heavy modules are imported inside the commands.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

STARTING = b"ppl-vae: interrupted while starting; nothing was written\n"


def _end_while_starting(signum, frame):
    """SIGINT before any work: one line and exit 130 at once. Raising instead could land inside torch's C++
    import callbacks, where a Python exception aborts the process (SIGABRT) rather than unwinding."""
    os.write(2, STARTING)
    os._exit(128 + signum)


try:  # a few pure-Python modules (torch comes later, in _start): a KeyboardInterrupt here unwinds cleanly
    from .config import SECTIONS, Config, ExecutorConfig, SampleConfig, StudyConfig
    from .errors import UserError
    from .flags import (
        apply_overrides,
        build_parser,
        config_from_args,
        eval_config_from_args,
        one_line,
        overrides_from_args,
        section_from_args,
    )
    from .options import flag_of, options_of
    from .runs.tracking import trackers_from_args
except KeyboardInterrupt:
    os.write(2, STARTING)
    raise SystemExit(130) from None

__all__ = ["main", "build_parser", "config_from_args", "overrides_from_args", "one_line"]


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

    if not args.resume and not args.out:
        raise UserError("fit needs --out RUN_DIR")
    name = Path(args.resume or args.out).name
    common = {"progress": _progress(args), "callbacks": trackers_from_args(args, name)}
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise UserError("--resume continues a run in place; leave out --out or give the same directory")
        config = _resume_config(args)
        run = fit(config, args.resume, resume=True, trust_program=args.trust_program, **common)
        if run.note == "finished":
            print(
                f"{run.path} has already trained its {run.checkpoint['epoch']} epochs; nothing to do "
                f"(extend it with --resume {run.path} --epochs N)"
            )
            return 0
    else:
        config = config_from_args(args)
        run = fit(config, args.out, overwrite=args.overwrite, distributed=args.distributed, **common)
        if not run.metrics:  # a rank other than 0: rank 0 reports
            return 0
    trackers = common["callbacks"]
    for tracker in trackers:
        tracker.log_run(run.path)
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

    options = section_from_args(args, "sample", SampleConfig)
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
    number = lambda value, spec: "skipped" if value is None else format(value, spec)
    accuracy = f"accuracy {r.accuracy:.4f}, " if r.accuracy is not None else ""
    print(
        f"log p(x) {r.log_px:.2f} ± {r.log_px_se:.2f}, ELBO {r.elbo:.2f}, KL {r.kl:.2f}, {accuracy}"
        f"k̂ mean {r.khat_mean:.2f} ({r.khat_frac_gt_0_7:.0%} > 0.7), active units {r.active_units}, "
        f"gaps: approximation {number(r.approximation_gap, '.2f')}, amortization {number(r.amortization_gap, '.2f')}, "
        f"SBC p {number(r.sbc_pvalue, '.2g')} -> {run.path}/evaluation/"
    )
    return 0


def _executor_from_args(args):
    from .studies.executors import make_executor

    e = section_from_args(args, "executor", ExecutorConfig)
    return make_executor(e.executor, e.jobs, e.address, e.cpus_per_job, e.gpus_per_job)


def _sigma_sweep(args) -> int:
    from .studies.sweep import parse_sigmas, sigma_label, sigma_sweep, sweep_table

    sigmas = parse_sigmas(args.sigmas)
    base, workflow, executor = config_from_args(args), eval_config_from_args(args), _executor_from_args(args)
    trackers = trackers_from_args(args, Path(args.out).name, "sigma-sweep")
    rows = sigma_sweep(
        sigmas,
        base,
        args.out,
        workflow,
        progress=_progress(args),
        overwrite=args.overwrite,
        executor=executor,
        callbacks=trackers,
    )
    _log_study(trackers, args.out, [f"sigma_{sigma_label(s)}" for s in sigmas])
    print(sweep_table(rows), end="")
    print(f"-> {args.out}/sweep.md, {args.out}/figures/")
    return 0


def _compare(args) -> int:
    from .studies.compare import compare, variants_from

    base = config_from_args(args)
    overrides = overrides_from_args(args)
    variants = variants_from(base, args.variants, args.grid, lambda config: apply_overrides(config, overrides))
    study = section_from_args(args, "study", StudyConfig)
    workflow, executor = eval_config_from_args(args), _executor_from_args(args)
    trackers = trackers_from_args(args, Path(args.out).name, "compare")
    comparison = compare(
        variants,
        args.out,
        workflow,
        seeds=study.seeds,
        equivalence=study.equivalence,
        progress=_progress(args),
        overwrite=args.overwrite,
        executor=executor,
        callbacks=trackers,
    )
    seeds = [f"/seed-{s}" for s in range(study.seeds)] if study.seeds > 1 else [""]
    _log_study(trackers, args.out, [f"{name}{seed}" for name in variants for seed in seeds])
    print(comparison.to_markdown(), end="")
    print(f"-> {args.out}/comparison.md, comparison.csv, comparison.json, figures/")
    return 0


def _log_study(trackers: list, out: str, names: list[str]) -> None:
    """Each run of the study (its figures, report and config), then the study's own tables and figures."""
    from .studies.runner import run_path

    for tracker in trackers:
        tracker.log_study(out, {name: run_path(Path(out), name) for name in names})


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
    from .inference.recording import kept_cache
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
