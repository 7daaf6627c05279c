"""The flags of the command line, generated from the options: one flag per config field, one parser per command.

Every option of :mod:`ppl_vae.config` becomes a flag here from its field (default, help, range,
registry: :func:`~ppl_vae.options.options_of`), so the command line cannot drift from the config.
A flag lands in the parsed arguments only when it is given; :func:`config_from_args` applies the
given ones on top of a ``--config`` TOML file (or the defaults). A bad flag is one line and exit 2,
with the nearest flag of the command it was given to.

Layer 5 — imports ``config``, ``options`` and ``errors``: pure Python, so ``ppl-vae --help`` answers
at once (torch is imported later, by the commands).
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from typing import Any

from .config import SECTIONS, Config, EvalConfig, ExecutorConfig, SampleConfig, StudyConfig, load_config
from .errors import bounded
from .options import flag_of, options_of, parse_text
from .runs.tracking import add_tracking_flags

__all__ = [
    "build_parser",
    "config_from_args",
    "eval_config_from_args",
    "section_from_args",
    "overrides_from_args",
    "apply_overrides",
    "one_line",
    "TRUST_HELP",
]


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
    """The ``evaluate`` options given on the command line, validated."""
    config = EvalConfig(**overrides_from_args(args, ["evaluate"]).get("evaluate", {}))
    return config.validate()


def section_from_args(args: argparse.Namespace, section: str, cls: type):
    """The options section ``cls`` (``evaluate``, ``study``, ...) from the flags given, validated."""
    return cls(**overrides_from_args(args, [section]).get(section, {})).validate()


TRUST_HELP = "import the program stored in the run (it is code: only for runs you trust; its sha256 is checked)"


STUDY_SECTIONS = {"evaluate": EvalConfig, "study": StudyConfig, "executor": ExecutorConfig}


def _add_study_options(p: argparse.ArgumentParser, kind: str, sections: Sequence[str]) -> None:
    """What every study takes: its folder, the runs' config, tracking, and its own ``sections``."""
    p.add_argument("--out", required=True, help=f"directory for the {kind} (new, empty, or a {kind} to continue)")
    p.add_argument("--overwrite", action="store_true", help="train again the runs in --out whose config changed")
    p.add_argument("--no-progress", action="store_true")
    add_tracking_flags(p)
    _add_config_options(p)
    for section in sections:
        _add_options(p, section, STUDY_SECTIONS[section])


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``ppl-vae`` and its commands; every option's flag comes from its field."""
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
    add_tracking_flags(p)
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
    _add_study_options(p, "sweep", sections=("evaluate", "executor"))

    p = sub.add_parser(
        "compare", parents=[verbosity], help="train and evaluate variants on equal terms, ranked by held-out log p(x)"
    )
    p.add_argument(
        "--variants", nargs="*", default=[], metavar="FILE.toml", help="one TOML file a variant (its stem names it)"
    )
    p.add_argument(
        "--grid", default="", help="e.g. 'guide=diagonal,iaf;prior=standard,vamp' (any option: flag or section.key)"
    )
    _add_study_options(p, "comparison", sections=("evaluate", "study", "executor"))

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
