"""The run directory layout, and what a directory on disk is: a run, a study, empty, or someone else's.

::

    RUN_DIR/
      config.toml          the resolved configuration (for reading; the checkpoint holds the truth)
      program/             copies of the user's program files (model.py, guide.py), when it has any
      checkpoint/          state.json + weights and optimizer safetensors (sha256 of each, and of the
                           program copies)
      best/                with early stopping (train.patience): the best validation epoch's weights
      metrics.json         final numbers of the training (nats per datapoint)
      history.csv          one row an epoch
      figures/             elbo.png, reconstructions.png, samples.png (samples_by_class.png for
                           programs taking y)
      evaluation/          written by ``evaluate`` as one unit: evaluation.json, settings.json (the
                           options, the data set and the checkpoint it evaluated), pointwise.npz,
                           inference_data.nc, figures/*.png
      report.md/.html      the numbers and pictures

    STUDY_DIR/             (compare, sigma-sweep)
      ppl_vae-study.json   the marker: which kind of study this is
      runs/<variant>/      one run directory a variant (and seed: runs/<variant>/seed-<s>)
      comparison.* | sweep.*, figures/

A directory may be replaced (``--overwrite``) only when it is recognisably ours: a run whose
``checkpoint/state.json`` carries the format tag, or a study with its marker, holding nothing
but the entries above (and leftovers of our own writers). Anything else — a user's data file
inside, a folder of photos — is refused and kept. :func:`check_out_dir` is that policy for a new
run's ``--out``; :func:`refuse_inputs_inside` keeps ``--overwrite`` off the run's own inputs.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from ..errors import UserError
from ..storage.atomic import open_regular
from ..storage.checkpoint import FORMAT

__all__ = [
    "EVALUATION",
    "SOURCE_COPIES",
    "STUDY_MARKER",
    "kind_of",
    "foreign_entries",
    "study_kind",
    "RUN_SUBDIRS",
    "check_out_dir",
    "refuse_inputs_inside",
]

EVALUATION = "evaluation"
SOURCE_COPIES = "program"  # the folder of the copies of the user's program files (the name runs on disk have)
STUDY_MARKER = "ppl_vae-study.json"
STUDY_FORMAT = "ppl_vae-study"
RUN_SUBDIRS = ("checkpoint", "best", "figures", SOURCE_COPIES)  # where a killed writer may leave a temporary file

_OURS_HIDDEN = re.compile(r"^\..+\.(tmp|staging|old)-[0-9a-f]{12}$|^\..+\.lock$")
_FIGURES = {"*.png"}
RUN_LAYOUT: dict[str, object] = {
    "config.toml": None,
    "metrics.json": None,
    "history.csv": None,
    "report.md": None,
    "report.html": None,
    "checkpoint": {"state.json": None, "*.safetensors": None, "*.pending": None},
    "best": {"state.json": None, "*.safetensors": None, "*.pending": None},
    SOURCE_COPIES: {"model.py": None, "guide.py": None},
    "figures": {"*.png": None},
    EVALUATION: {
        "evaluation.json": None,
        "settings.json": None,
        "pointwise.npz": None,
        "inference_data.nc": None,
        "figures": {"*.png": None},
    },
    # written into the run's top level by earlier versions of ppl_vae
    "evaluation.json": None,
    "evaluation_settings.json": None,
    "inference_data.nc": None,
    "pointwise.npz": None,
}
"""Entry name (or pattern) -> ``None`` for a file, a nested layout for a directory."""

STUDY_LAYOUT: dict[str, object] = {
    STUDY_MARKER: None,
    "runs": "runs",  # a tree of run directories
    "figures": {"*.png": None},
    **{f"{stem}.{ext}": None for stem in ("comparison", "sweep") for ext in ("csv", "json", "md")},
}


def _is_run(path: Path) -> bool:
    state = path / "checkpoint" / "state.json"
    try:
        with open_regular(state) as f:
            head = json.loads(f.read(16 << 20).decode("utf-8"))
    except (OSError, UserError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(head, dict) and head.get("format") == FORMAT


def study_kind(path: str | Path) -> str | None:
    """``"compare"`` or ``"sigma-sweep"`` for a study directory (its marker, or the table an older
    version wrote), else ``None``."""
    path = Path(path)
    try:
        with open_regular(path / STUDY_MARKER) as f:
            marker = json.loads(f.read(1 << 20).decode("utf-8"))
        if isinstance(marker, dict) and marker.get("format") == STUDY_FORMAT and isinstance(marker.get("kind"), str):
            return marker["kind"]
        return None
    except FileNotFoundError:
        pass
    except (OSError, UserError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if (path / "runs").is_dir():
        if (path / "comparison.json").is_file():
            return "compare"
        if (path / "sweep.json").is_file():
            return "sigma-sweep"
    return None


def kind_of(path: str | Path) -> str:
    """What ``path`` is: ``missing``, ``empty``, ``run``, ``study``, ``file`` or ``other``."""
    path = Path(path)
    if path.is_symlink():
        return "other"
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return "file"
    if not any(path.iterdir()):
        return "empty"
    if _is_run(path):
        return "run"
    if study_kind(path):
        return "study"
    return "other"


def _entries(path: Path) -> list[Path]:
    """The entries of ``path``, sorted, without the temporary files and locks our own writers leave."""
    return [entry for entry in sorted(path.iterdir()) if not _OURS_HIDDEN.match(entry.name)]


def _foreign(path: Path, layout: dict[str, object], limit: int) -> list[Path]:
    found: list[Path] = []
    for entry in _entries(path):
        if len(found) >= limit:
            break
        spec = next((v for k, v in layout.items() if fnmatch.fnmatchcase(entry.name, k)), False)
        if entry.is_symlink() or spec is False:
            found.append(entry)
        elif spec is None:
            if not entry.is_file():
                found.append(entry)
        elif not entry.is_dir():
            found.append(entry)
        elif spec == "runs":
            found += _foreign_runs(entry, limit - len(found))
        else:
            found += _foreign(entry, spec, limit - len(found))
    return found


def _foreign_runs(path: Path, limit: int) -> list[Path]:
    """A tree whose leaves are run directories (``runs/<variant>`` or ``runs/<variant>/seed-<s>``)."""
    found: list[Path] = []
    for entry in _entries(path):
        if len(found) >= limit:
            break
        if entry.is_symlink() or not entry.is_dir():
            found.append(entry)
        elif (entry / "checkpoint").is_dir():
            found += _foreign(entry, RUN_LAYOUT, limit - len(found))
        else:
            found += _foreign_runs(entry, limit - len(found))
    return found


def foreign_entries(path: str | Path, limit: int = 3) -> list[Path]:
    """Entries of a run or study directory that ppl_vae did not write (at most ``limit``)."""
    path = Path(path)
    return _foreign(path, STUDY_LAYOUT if study_kind(path) else RUN_LAYOUT, limit)


# --- the output-folder policy: which directories a new run may take ----------------------------------


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an ``out`` that a new run may not take: an existing file, someone else's folder, or a
    run or study without ``overwrite`` (and, with it, one holding files ppl_vae did not write)."""
    out = Path(out)
    kind = kind_of(out)
    if out.exists() and out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise UserError(f"--out {out} is the working directory or holds it; give a folder from outside it")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link; give the directory it points to, or another path")
    if kind == "file":
        raise UserError(f"--out {out} exists and is not a directory")
    if kind in ("missing", "empty"):
        return out
    if kind == "other":
        if overwrite:
            raise UserError(
                f"--out {out} is not a ppl_vae run or study; --overwrite replaces only those, so it is kept: "
                "choose another --out"
            )
        raise UserError(f"--out {out} already exists and is not empty; choose another --out")
    if not overwrite:
        raise UserError(f"--out {out} already holds a ppl_vae {kind}; pass --overwrite to replace it")
    foreign = foreign_entries(out)
    if foreign:
        names = ", ".join(str(p.relative_to(out)) for p in foreign)
        raise UserError(
            f"--out {out} holds files ppl_vae did not write ({names}); --overwrite would delete them, so nothing "
            "was replaced: move them or choose another --out"
        )
    return out


def refuse_inputs_inside(out: Path, inputs: list[Path]) -> None:
    """``--overwrite`` must not delete the data or the program files (``inputs``) the new run is made from."""
    root = out.resolve()
    for path in inputs:
        resolved = path.resolve()
        if resolved == root or root in resolved.parents:
            raise UserError(f"--out {out} holds {path}, an input of this run; --overwrite would delete it")
