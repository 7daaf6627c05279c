"""What a run directory holds, as files, and the checks that every one of them is what it says.

The schemas of a run's own files (their layout is :mod:`ppl_vae.runs.layout`'s):

- ``checkpoint/state.json``'s ``extra``: the fields a run keeps beside its weights (the data's
  shape, the history, the position in the epoch, the step kind, the programs' record);
- the checkpoint's ``config``, the resolved config the weights were trained with (``config.toml``
  is its copy for reading);
- ``metrics.json``: the numbers of a finished training, each field typed;
- ``evaluation/evaluation.json``: an evaluation's :class:`~ppl_vae.diagnostics.summary.Summary`;
- ``history.csv``: one row an epoch, its columns in a fixed order.

A reader (:func:`~ppl_vae.runs.load.load`, a resume, a study) checks every field here before it
trusts one: a hand-edited or truncated file is refused in one line naming the file and the field.

Layer 3 — imports ``config`` (to rebuild a checkpoint's config), ``storage``, the step kinds of
``inference`` and the summary of ``diagnostics``; nothing that trains or draws.
"""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path
from typing import Any

import pyro
import torch

from ..config import Config, from_dict
from ..contracts import DATA_PLATE
from ..diagnostics.summary import Summary
from ..errors import CheckpointError, UserError
from ..inference.steps import STEP_KINDS, as_step_kind
from ..storage.checkpoint import read_state
from ..storage.schema import read_table
from .layout import EVALUATION

__all__ = [
    "HISTORY_COLUMNS",
    "history_columns",
    "check_extra",
    "check_position",
    "config_of",
    "read_run_config",
    "METRICS",
    "REQUIRED_METRICS",
    "versions",
    "read_metrics",
    "read_evaluation",
]

HISTORY_COLUMNS = ("epoch", "train_objective", "test_elbo", "beta", "seconds")
"""The first columns of ``history.csv``, in this order; the others (``val_elbo``) follow, sorted."""


def history_columns(history: list[dict]) -> list[str]:
    """The columns of ``history.csv`` for these rows: :data:`HISTORY_COLUMNS` first, then any others, sorted."""
    keys = set().union(*history) if history else set()
    return [c for c in HISTORY_COLUMNS if c in keys] + sorted(keys - set(HISTORY_COLUMNS))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def check_extra(state: dict, where: Path) -> dict:
    """The fields a run keeps in its checkpoint's ``extra``, each checked."""
    extra = state["extra"]
    allowed = {
        "batch_index",
        "epoch_loss",
        "history",
        "data_dim",
        "image_shape",
        "programs",
        "step_kind",
        "num_classes",
        "data_plate",
    }
    history = extra.get("history")
    problem = None
    if set(extra) - allowed:
        problem = f"unexpected fields {sorted(set(extra) - allowed)}"
    elif not _count(extra.get("data_dim"), 1):
        problem = "the data shape (data_dim) is missing or not a positive integer"
    elif not (
        isinstance(extra.get("image_shape"), list)
        and extra["image_shape"]
        and all(_count(s, 1) for s in extra["image_shape"])
        and math.prod(extra["image_shape"]) == extra["data_dim"]
    ):
        problem = "image_shape must be positive integers whose product is data_dim"
    elif not _count(extra.get("batch_index")):
        problem = "batch_index must be a non-negative integer"
    elif not _number(extra.get("epoch_loss")):
        problem = "epoch_loss must be a number"
    elif not isinstance(history, list) or len(history) != state["epoch"]:
        problem = f"history must list one row for each of the {state['epoch']} completed epochs"
    elif not all(
        isinstance(row, dict)
        and row.get("epoch") == i + 1
        and all(isinstance(k, str) and _number(v) for k, v in row.items())
        for i, row in enumerate(history)
    ):
        problem = "history rows must be numbers, one row an epoch, in order"
    elif extra.get("step_kind") is not None and not _step_kind(extra["step_kind"]):
        problem = f"step_kind must be one of {', '.join(STEP_KINDS)}"
    elif extra.get("num_classes") is not None and not _count(extra["num_classes"], 1):
        problem = "num_classes must be a positive integer"
    elif not isinstance(extra.get("data_plate", DATA_PLATE), str) or not extra.get("data_plate", DATA_PLATE):
        problem = "data_plate must name the programs' plate over the batch"
    if problem:
        raise CheckpointError(f"{where}/checkpoint/state.json: {problem}")
    if extra.get("step_kind") is not None:
        extra["step_kind"] = as_step_kind(extra["step_kind"])  # older checkpoints stored on, replay, off
    return extra


def check_position(state: dict, batches: int, epochs: int, where: Path) -> None:
    """The checkpoint's place in training — epoch, step and batch of the epoch — is one this data can reach:
    ``batches`` batches an epoch, ``epochs`` in all. Checked before a resume trains or writes anything."""
    epoch, step, index = state["epoch"], state["step"], state["extra"]["batch_index"]
    problem = None
    if epoch > epochs:
        problem = f"epoch {epoch} is beyond the run's {epochs} epochs"
    elif index > batches:
        problem = f"batch_index {index} is beyond the {batches} batches of an epoch of this data"
    elif step != epoch * batches + index:
        problem = f"step {step} is not epoch {epoch} x {batches} batches + batch_index {index}"
    if problem:
        raise CheckpointError(f"{where}/checkpoint/state.json: {problem}; refusing to resume from it")


def _step_kind(name) -> str:
    """``name`` as a step kind, or "" where it names none."""
    try:
        return as_step_kind(name) if isinstance(name, str) else ""
    except ValueError:
        return ""


def config_of(state: dict, where: Path) -> Config:
    """The config a checkpoint's ``state.json`` holds, validated (a bad one is the checkpoint's fault)."""
    try:
        return from_dict(state["config"]).validate()
    except UserError as err:
        raise CheckpointError(f"{where}: the checkpoint's config is invalid: {err}") from None


def read_run_config(run_dir: str | Path) -> Config:
    """The config a run was trained with (from its checkpoint, checked)."""
    run_dir = Path(run_dir)
    return config_of(read_state(run_dir / "checkpoint"), run_dir)


METRICS: dict[str, tuple[type, ...]] = {
    "train_objective": (int, float),
    "test_elbo": (int, float),
    "first_epoch_test_elbo": (int, float),
    "epochs": (int,),
    "seconds": (int, float),
    "sigma": (int, float),
    "likelihood": (str,),
    "prior": (str,),
    "guide": (str,),
    "model": (str,),
    "model_sha256": (str,),
    "guide_sha256": (str,),
    "latent_sites": (list,),
    "observed_sites": (list,),
    "data_plate": (str,),
    "figures_absent": (dict,),
    "latent_dim": (int,),
    "data": (str,),
    "n_train": (int,),
    "n_test": (int,),
    "parameters": (int,),
    "n_labelled": (int,),
    "step": (str,),
    "best_epoch": (int,),
    "best_val_elbo": (int, float),
    "versions": (dict,),
}
REQUIRED_METRICS = ("train_objective", "test_elbo", "epochs", "seconds", "parameters")


def versions() -> dict[str, str]:
    """``{library: version}`` of torch, pyro-ppl, arviz and ppl_vae: what a run's numbers were produced with.

    torch's includes its build (``2.14.1+cu130``). The same command with the same versions on the
    same machine gives the same numbers, bit for bit; other versions give them within float noise
    per step (README, *Reproducibility*). arviz is named without being imported (it is slow to import).
    """
    from .. import __version__

    return {
        "torch": str(torch.__version__),
        "pyro-ppl": pyro.__version__,
        "arviz": metadata.version("arviz"),
        "ppl_vae": __version__,
    }


def read_metrics(run_dir: str | Path) -> dict:
    """``metrics.json`` with every field checked (``{}`` when the run has not finished)."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    metrics = read_table(path, "metrics file", error=CheckpointError)
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} must hold a table of numbers")
    for key in REQUIRED_METRICS:
        if key not in metrics:
            raise CheckpointError(f"{path} has no {key!r}; it is not a finished run's metrics file")
    for key, value in metrics.items():
        kinds = METRICS.get(key, (int, float, str, type(None)))
        texts = (
            list(value.values()) + list(value) if isinstance(value, dict) else value if isinstance(value, list) else []
        )
        if isinstance(value, bool) or not isinstance(value, kinds) or not all(isinstance(t, str) for t in texts):
            what = {
                (int,): "an integer",
                (int, float): "a number",
                (str,): "text",
                (list,): "a list of names",
                (dict,): "a table of texts",
            }.get(kinds, "a number or text")
            raise CheckpointError(f"{path}: {key!r} must be {what}, got {value!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metrics.get("versions", {}).items()):
        raise CheckpointError(f"{path}: 'versions' must name a version (text) for each library")
    if metrics["epochs"] < 1 or not metrics["seconds"] >= 0 or metrics["parameters"] < 0:
        raise CheckpointError(f"{path}: epochs, seconds and parameters must be counts")
    return metrics


def read_evaluation(run_dir: str | Path) -> Summary:
    """The run's ``evaluation/evaluation.json`` as a :class:`Summary`; :class:`UserError` where none can be read."""
    path = Path(run_dir) / EVALUATION / "evaluation.json"
    return Summary.from_json(read_table(path, "evaluation"), str(path))
