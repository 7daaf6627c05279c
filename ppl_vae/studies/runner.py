"""Train and evaluate a set of named variants on equal terms, resumably, in a study directory.

Each variant is a :class:`~ppl_vae.config.Config`; all share the data split, seeds, training
budget, test points and K. A study writes only into a folder that is new, empty or a study of
its own kind (its marker file, :data:`~ppl_vae.runs.layout.STUDY_MARKER`), holding the folder's
lock while it works. Before anything is trained, every variant is checked and its run
directory ``runs/<name>`` is given one of these plans:

- ``new``: no run there yet — train it;
- ``resume``: the same config (and the same program files, by sha256) stopped before its last
  epoch — continue it from its checkpoint;
- ``evaluate``: the same config, trained, but not evaluated at these settings — evaluate it;
- ``reuse``: the same config, trained and evaluated at these settings — reuse it as it is;
- ``retrain`` (only with ``overwrite``): a run of another config — replace it.

A run of another config is never replaced without ``overwrite``, and a folder that is not a
ppl_vae run is never touched. So an interrupted study retrains only what did not finish.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import Config, EvalConfig
from ..data.datasets import Dataset
from ..diagnostics.summary import Summary
from ..errors import CheckpointError, UserError
from ..runs.evaluation import evaluate_run
from ..runs.fit import fit
from ..runs.layout import EVALUATION, STUDY_FORMAT, STUDY_MARKER, kind_of, study_kind
from ..runs.load import load
from ..runs.preflight import preflight, with_absolute_sources
from ..runs.run import Run
from ..runs.schema import read_evaluation, read_metrics, read_run_config
from ..runs.sources import current_digests
from ..storage.checkpoint import read_state
from ..storage.directories import check_contained, locked, make_parents, remove_created
from ..storage.schema import NewerSchema, read_table, write_table
from .executors import Executor

__all__ = ["run_variants", "run_path", "safe_name", "open_study", "Job", "VariantCallback"]

log = logging.getLogger(__name__)

VariantCallback = Callable[[str, int, dict], None]
"""``f(variant, epoch, row)``: a study's callback, called after every epoch of every variant it trains."""


def safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if not cleaned or cleaned.startswith("."):
        raise UserError(f"variant name {name!r} cannot be used as a directory name")
    return cleaned


def run_path(out: Path, name: str) -> Path:
    """Where the run of variant ``name`` lives: ``out/runs/<name>``, each ``/``-separated part made safe."""
    return Path(out, "runs", *(safe_name(part) for part in name.split("/")))


def _check_study_dir(out: Path, kind: str) -> None:
    what = kind_of(out)
    if what in ("missing", "empty"):
        return
    if what == "study" and study_kind(out) == kind:
        if (out / STUDY_MARKER).is_file():
            read_table(out / STUDY_MARKER, "study marker")  # a newer ppl_vae's study is not continued by this one
        return
    if what == "study":
        raise UserError(f"--out {out} is a {study_kind(out)} study, not a {kind} study; choose another --out")
    if what == "run":
        raise UserError(
            f"--out {out} is a ppl_vae run; a {kind} study needs a new or empty folder: choose another --out"
        )
    if what == "file":
        raise UserError(f"--out {out} exists and is not a directory")
    raise UserError(f"--out {out} is not empty and not a ppl_vae {kind} study; choose a new or empty folder")


@contextlib.contextmanager
def open_study(out: str | Path, kind: str) -> Iterator[Path]:
    """Hold the lock of the study folder ``out`` (which must be new, empty or a ``kind`` study).

    Nothing is written yet: :func:`run_variants` creates the folder and its marker once every
    variant has been checked, so a study refused for bad input leaves no trace.
    """
    out = Path(out)
    _check_study_dir(out, kind)
    created = make_parents(out)
    try:
        with locked(out, "--out"):
            _check_study_dir(out, kind)  # again, now that no other writer can change it
            yield out
    finally:
        if not out.exists():
            remove_created(created)


def _mark(out: Path, kind: str) -> None:
    if not (out / STUDY_MARKER).is_file():
        out.mkdir(exist_ok=True)
        write_table(out / STUDY_MARKER, {"format": STUDY_FORMAT, "kind": kind, "version": 1})


HOW = ("compile_sampler",)  # evaluation settings that change how the numbers are computed, not what they are


def _estimates(settings) -> dict | None:
    """The evaluation settings that decide its numbers: ``settings`` without :data:`HOW`."""
    return {k: v for k, v in settings.items() if k not in HOW} if isinstance(settings, dict) else None


def _evaluated(run_dir: Path, workflow: EvalConfig, step: int, data_name: str) -> bool:
    """Whether ``run_dir`` holds an evaluation of checkpoint ``step`` at ``workflow``'s settings."""
    try:
        settings = read_table(run_dir / EVALUATION / "settings.json", "evaluation settings")
        read_evaluation(run_dir)  # a readable summary, or evaluate again
    except NewerSchema:
        raise  # a newer ppl_vae's evaluation is neither misread nor replaced
    except UserError:
        return False
    return (
        isinstance(settings, dict)
        and _estimates(settings.get("evaluate")) == _estimates(asdict(workflow))
        and settings.get("data") == {"name": data_name, "split": "test"}
        and (settings.get("checkpoint") or {}).get("step") == step
        and (run_dir / EVALUATION / "pointwise.npz").is_file()
    )


def _plan(run_dir: Path, config: Config, workflow: EvalConfig, overwrite: bool) -> str:
    """What to do with the run directory of a variant (see the module's docstring)."""
    kind = kind_of(run_dir)
    if kind in ("missing", "empty"):
        return "new"
    if kind != "run":
        raise UserError(f"{run_dir} is not a ppl_vae run; the study will not touch it: move it away")
    try:
        state = read_state(run_dir / "checkpoint")
        run_config = read_run_config(run_dir)
        metrics = read_metrics(run_dir)
    except CheckpointError as err:
        if overwrite:
            return "retrain"
        raise UserError(f"{err}; pass --overwrite to train that variant again") from None
    recorded = {role: e.get("sha256") for role, e in (state["extra"].get("programs") or {}).items()}
    if run_config != config or recorded != current_digests(config):
        if overwrite:
            return "retrain"
        changed = [
            f"{s}.{k}"
            for s in ("data", "model", "guide", "train")
            for k, v in asdict(getattr(config, s)).items()
            if asdict(getattr(run_config, s))[k] != v
        ] or ["its program files"]
        raise UserError(
            f"{run_dir} holds a run of another config ({', '.join(changed[:3])} differ); "
            "pass --overwrite to train it again"
        )
    if state["epoch"] < config.train.epochs or not metrics:
        return "resume"
    return "reuse" if _evaluated(run_dir, workflow, state["step"], config.data.name) else "evaluate"


def run_variants(
    variants: dict[str, Config],
    out: str | Path,
    workflow: EvalConfig,
    data: Dataset,
    progress: bool = True,
    overwrite: bool = False,
    kind: str = "compare",
    executor: Executor | None = None,
    callbacks: Sequence[VariantCallback] = (),
) -> dict[str, tuple[Run, Summary]]:
    """Fit (or reuse) and evaluate every variant under ``out/runs/<name>``; return runs and evaluations.

    Call inside :func:`open_study`. Every variant is checked, and its plan made, before the
    first is trained; then ``executor`` (default: one after another, here) carries the plans
    out, and the runs are read back from their folders. Each of ``callbacks`` is called as
    ``f(variant, epoch, row)`` after every epoch a variant trains, in the process that trains it
    (so with ``--jobs``/Ray it must pickle: a module-level function or object, not a lambda).

    ``progress`` draws a bar over the variants and, when they are trained here, each one's bars
    (training, then evaluation) inside it; elsewhere the bar moves as each variant ends. Without
    it, a line is logged as each variant begins (here) and ends.
    """
    out = Path(out)
    plans, dirs = {}, {}
    # a run or a folder of the study that a link carries elsewhere is refused before any variant is trained
    check_contained(out, ("runs", "figures", *(str(run_path(out, name).relative_to(out)) for name in variants)))
    for name, config in variants.items():
        run_dir = run_path(out, name)
        if run_dir in dirs.values():
            other = next(n for n, d in dirs.items() if d == run_dir)
            raise UserError(f"variants {other!r} and {name!r} would share the run directory {run_dir}")
        dirs[name] = run_dir
        config = with_absolute_sources(config.validate())
        plans[name] = _plan(run_dir, config, workflow, overwrite)
        if plans[name] in ("new", "retrain"):
            preflight(config, data)
    executor = executor or Executor()
    executor.start()  # a cluster that cannot be joined is refused before the study is marked
    _mark(out, kind)

    here = executor.kind == "sequential"  # bars of worker processes would garble the terminal
    jobs = [
        Job(name, config, dirs[name], plans[name], workflow, tuple(callbacks), progress and here)
        for name, config in variants.items()
    ]
    with tqdm(total=len(jobs), desc="variants", unit="run", disable=not progress) as bar:
        executor.map(execute_plan, jobs, shared=data, tick=_ticker(jobs, bar, progress), start=_starter(jobs, bar))
    results = {}
    for name in variants:  # the stored sources are byte for byte the files this study names: trusted as those are
        run = load(dirs[name], trust_program=True)
        run.data = data
        results[name] = (run, read_evaluation(dirs[name]))
    return results


@dataclass(frozen=True)
class Job:
    """One variant's plan, as sent to whichever process carries it out."""

    name: str
    config: Config
    run_dir: Path
    plan: str
    workflow: EvalConfig
    callbacks: tuple[VariantCallback, ...] = ()
    progress: bool = False  # its own bars (training, evaluation), nested in the study's


DOING = {
    "new": "training",
    "retrain": "training again",
    "resume": "resuming",
    "evaluate": "evaluating",
    "reuse": "reused as it is",
}


def _starter(jobs: list[Job], bar) -> Callable[[int], None]:
    def start(i: int) -> None:
        job = jobs[i]
        if bar.disable:
            log.info("variant %d/%d %s: %s", i + 1, len(jobs), job.name, DOING[job.plan])
        else:
            bar.set_postfix_str(f"{job.name}: {DOING[job.plan]}")

    return start


def _ticker(jobs: list[Job], bar, progress: bool) -> Callable[[int], None]:
    ended = []

    def tick(i: int) -> None:
        ended.append(i)
        bar.update()
        if progress:
            bar.set_postfix_str(f"{jobs[i].name}: done")
        else:
            log.info("variant %s done (%d/%d)", jobs[i].name, len(ended), len(jobs))

    return tick


def _named(callback: VariantCallback, name: str, epoch: int, row: dict) -> None:
    callback(name, epoch, row)


def execute_plan(job: Job, data: Dataset) -> None:
    """Carry out one variant's plan (see the module's docstring), in whichever process runs it."""
    hooks = {"progress": job.progress, "callbacks": [functools.partial(_named, f, job.name) for f in job.callbacks]}
    if job.plan in ("new", "retrain"):
        run = fit(job.config, job.run_dir, overwrite=job.plan == "retrain", data=data, **hooks)
    elif job.plan == "resume":
        run = fit(None, job.run_dir, resume=True, data=data, trust_program=True, **hooks)
    else:
        run = load(job.run_dir, trust_program=True)
        run.data = data
    if job.plan != "reuse":
        evaluate_run(run, job.workflow, progress=job.progress)
