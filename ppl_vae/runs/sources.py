"""A run remembers its code, and imports it only when trusted.

A *source* (:class:`SourceFile`) is one of the user's program files, read once: the code of
the factory that builds the model or the guide, as opposed to the program itself (the
model/guide pair of :class:`ppl_vae.contracts.Program`).

A run made from a user's program (``--model file.py:factory`` or ``--guide file.py:factory``)
keeps a copy of each program file in ``RUN_DIR/program/<role>.py``; the sha256 of each copy
is recorded in every checkpoint (whose ``state.json`` is digest-checked). The trust rule,
as ``trust_remote_code`` is for model hubs:

- ``fit`` imports the file the user names on the command line (naming it is the trust), and
  the bytes it imports are the bytes it stores: the file is read once.
- Loading a run (``load``, ``sample``, ``evaluate``, ``fit --resume``) imports the *stored copy*
  only when the caller says so (``trust_program=True``, ``--trust-program``) and its sha256 is
  the recorded one; otherwise one line names the file and its digest, and nothing is imported.
- A run whose config names a program but which holds no recorded copy (a built-in run whose
  ``state.json`` was edited to point at a ``.py`` file) never imports it, trusted or not: a run
  directory cannot name code to run.

Errors raised inside a user's program are reported as one line naming the program, the file
and line where it raised, and the last sample site it reached (:func:`user_code_errors`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, is_program_spec
from ..errors import ProgramError, UserError
from ..inference.trial import LastSite, user_line
from ..storage.atomic import read_bounded, sha256_bytes, write_bytes
from .layout import SOURCE_COPIES

__all__ = [
    "SourceFile",
    "source_specs",
    "named_file",
    "read_named",
    "record_of",
    "store",
    "stored_sources",
    "import_factory",
    "user_code_errors",
    "current_digests",
]

ROLES = ("model", "guide")
MAX_SOURCE_BYTES = 10 << 20


@dataclass(frozen=True)
class SourceFile:
    """One program file, read once: what is imported is what is stored."""

    role: str  # "model" or "guide"
    spec: str  # path/to/file.py:factory, as the run's config names it
    path: Path  # the file the code was read from (the user's file, or the run's stored copy)
    code: bytes

    @property
    def factory(self) -> str:
        return self.spec.rpartition(":")[2]

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.code)


def source_specs(config: Config) -> dict[str, str]:
    """``{role: "file.py:factory"}`` for the program files ``config`` names."""
    specs = {}
    if config.model.program:
        specs["model"] = config.model.program
    if is_program_spec(config.guide.name):
        specs["guide"] = config.guide.name
    return specs


def _read(path: Path, what: str) -> bytes:
    return read_bounded(path, f"{what} program file", MAX_SOURCE_BYTES)


def named_file(role: str, spec: str) -> SourceFile:
    """The program file ``spec`` names, read once."""
    path = Path(spec.rpartition(":")[0])
    return SourceFile(role, spec, path, _read(path, f"--{role}"))


def read_named(config: Config) -> dict[str, SourceFile]:
    """The program files ``config`` names, read once (the caller named them: that is its trust)."""
    return {role: named_file(role, spec) for role, spec in source_specs(config).items()}


def current_digests(config: Config) -> dict[str, str]:
    """sha256 of the program files ``config`` names, as they are on disk now."""
    return {role: p.sha256 for role, p in read_named(config).items()}


def record_of(sources: dict[str, SourceFile]) -> dict[str, dict[str, str]]:
    """What a checkpoint records of the program files: the stored copy, its sha256, the spec it came from."""
    return {
        role: {"file": f"{SOURCE_COPIES}/{role}.py", "sha256": p.sha256, "spec": p.spec} for role, p in sources.items()
    }


def store(sources: dict[str, SourceFile], run_dir: Path) -> None:
    """Write a copy of each program file into ``run_dir/program/<role>.py``."""
    for role, p in sources.items():
        write_bytes(run_dir / SOURCE_COPIES / f"{role}.py", p.code)


def _checked_record(record: Any, run_dir: Path) -> dict[str, dict[str, str]]:
    if record is None:
        return {}
    ok = isinstance(record, dict) and all(
        role in ROLES
        and isinstance(entry, dict)
        and set(entry) == {"file", "sha256", "spec"}
        and entry["file"] == f"{SOURCE_COPIES}/{role}.py"
        and isinstance(entry["sha256"], str)
        and len(entry["sha256"]) == 64
        and isinstance(entry["spec"], str)
        and is_program_spec(entry["spec"])
        for role, entry in record.items()
    )
    if not ok:
        raise ProgramError(f"{run_dir}: the checkpoint's record of program files is malformed; nothing was imported")
    return record


def stored_sources(run_dir: Path, config: Config, record: Any, trust: bool) -> dict[str, SourceFile]:
    """The run's stored program copies, under the trust rule (see the module's docstring)."""
    named, record = source_specs(config), _checked_record(record, run_dir)
    if not named and not record:
        return {}
    for role, spec in named.items():
        if role not in record:
            raise ProgramError(
                f"{run_dir}: its config names the program {spec} but the run holds no stored copy of it; "
                "a run directory cannot name code to run, so nothing was imported"
            )
    if set(record) != set(named) or any(record[r]["spec"] != named[r] for r in named):
        raise ProgramError(
            f"{run_dir}: the checkpoint's program record does not match its config; nothing was imported"
        )
    if not trust:
        first = record[next(iter(record))]
        more = f" and {len(record) - 1} more" if len(record) > 1 else ""
        raise ProgramError(
            f"{run_dir / first['file']} (sha256 {first['sha256']}){more} is code stored in the run; loading the run "
            "imports it: pass --trust-program (trust_program=True) if you trust it"
        )
    sources = {}
    for role, entry in record.items():
        path = run_dir / entry["file"]
        code = _read(path, f"the run's stored {role}")
        if sha256_bytes(code) != entry["sha256"]:
            raise ProgramError(
                f"{path} does not match the sha256 recorded in the checkpoint ({entry['sha256']}); "
                "refusing to import it"
            )
        sources[role] = SourceFile(role, named[role], path, code)
    return sources


def import_factory(source: SourceFile) -> Callable:
    """Import ``source``'s code (from its bytes, not from the file again) and return its factory.

    Modules are cached by the sha256 of their code: the same code is imported once per process,
    and edited code is a new module.
    """
    name = f"ppl_vae_program_{source.sha256[:24]}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_loader(name, loader=None, origin=str(source.path))
        module = importlib.util.module_from_spec(spec)
        module.__file__ = str(source.path)
        sys.modules[name] = module
        try:
            exec(compile(source.code, str(source.path), "exec"), module.__dict__)  # noqa: S102 - trusted code
        except (Exception, SystemExit) as err:  # noqa: BLE001 - whatever the user's module raises at import
            del sys.modules[name]
            raise ProgramError(f"importing {source.path} failed: {_first_line(err)}") from None
    factory = getattr(module, source.factory, None)
    if not callable(factory):
        raise ProgramError(f"{source.path} has no callable {source.factory!r}")
    return factory


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _describe(err: BaseException, sources: dict[str, SourceFile], site: str | None) -> str:
    files = {str(p.path): p for p in sources.values()}
    where = user_line(err, files)
    if where is not None:
        spec = files[where[0]].spec
        place = f"{where[0]} line {where[1]}, in {where[2]}"
    else:
        spec = " and ".join(sorted({p.spec for p in sources.values()}))
        place = ""
    parts = [place, f"last site {site!r}" if site else ""]
    detail = "; ".join(p for p in parts if p)
    return f"the program {spec} raised {_first_line(err)}" + (f" ({detail})" if detail else "")


@contextlib.contextmanager
def user_code_errors(sources: dict[str, SourceFile]) -> Iterator[None]:
    """Report an error raised inside a user's program as one :class:`ProgramError` line.

    Errors of the bench itself (a :class:`UserError` already, an interrupt) pass through; with
    no user program, nothing is wrapped, so a defect of a built-in program keeps its traceback.
    """
    if not sources:
        yield
        return
    from ..inference.trainer import Interrupted

    tracker = LastSite()
    try:
        with tracker:
            yield
    except (UserError, Interrupted):
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 - anything the user's code raises
        raise ProgramError(_describe(err, sources, tracker.name)) from None
