"""Experiment trackers as training callbacks: TensorBoard and MLflow.

Each tracker is a callback ``f(epoch, row)`` for :func:`ppl_vae.fit` (``row`` is the epoch's row
of ``history.csv``), and :meth:`log_run` adds what a finished run directory holds: its config,
its figures, its report and its evaluation's numbers. For a study (:func:`ppl_vae.compare`,
:func:`ppl_vae.sigma_sweep`), :class:`PerVariant` turns one tracker into the study's callback
``f(variant, epoch, row)``, one tracker a variant (a TensorBoard sub-folder, an MLflow child run).

Both libraries are optional extras (``pip install 'ppl_vae[tensorboard]'``, ``'ppl_vae[mlflow]'``),
imported only when a tracker is made; a missing one is refused in one line before any training.
A tracker pickles (its writer or client is opened again where it is unpickled), so a study's
worker processes (``--jobs``, Ray) log from where they train.

Example (a notebook)::

    tb = TensorBoard("tb/digits")
    run = ppl_vae.fit(config, "runs/digits", callbacks=[tb])
    tb.log_run(run.path)

Layer 3 — may import: the standard library, ``ppl_vae.errors``, ``ppl_vae.storage.atomic``; torch's
TensorBoard writer and MLflow lazily (the command line's parser imports this module for its flags).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..storage.atomic import read_json

EVALUATION = "evaluation"  # ppl_vae.runs.layout.EVALUATION, not imported: the CLI's parser imports this module

__all__ = ["TensorBoard", "MLflow", "PerVariant", "SCALARS", "flat_config", "add_tracking_flags", "trackers_from_args"]

SCALARS = {
    "train_objective": "objective/train",
    "test_elbo": "elbo/test",
    "val_elbo": "elbo/validation",
    "beta": "schedule/beta",
    "seconds": "time/seconds_per_epoch",
}
"""Column of ``history.csv`` -> TensorBoard tag; any other number of a row (an ELBO term) goes under ``terms/``."""

REPORTS = ("report.md", "report.html")


def _numbers(row: dict) -> dict[str, float]:
    """The finite numbers of a history row or a table, but the epoch (the step they are logged at)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k not in ("epoch", "schema") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _figures(run_dir: Path) -> list[tuple[str, Path]]:
    """``(tag, path)`` of every figure of a run (training's, then evaluation's) or of a study."""
    found = []
    for folder, prefix in ((run_dir / "figures", "figures"), (run_dir / EVALUATION / "figures", "evaluation")):
        found += [(f"{prefix}/{p.stem}", p) for p in sorted(folder.glob("*.png")) if p.is_file()]
    return found


def flat_config(run_dir: str | Path) -> dict[str, str]:
    """The run's resolved ``config.toml`` as ``{"section.option": "value"}`` (MLflow's params)."""
    path = Path(run_dir) / "config.toml"
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {f"{s}.{k}": str(v) for s, values in config.items() if isinstance(values, dict) for k, v in values.items()}


def _evaluation(run_dir: Path) -> dict[str, float]:
    from .schema import read_evaluation  # torch and pyro: not at import, which the CLI's parser does

    try:
        return _numbers(read_evaluation(run_dir).to_json())
    except UserError:
        return {}


def _last_epoch(run_dir: Path) -> int:
    try:
        metrics = read_json(run_dir / "metrics.json", "metrics file")
    except UserError:
        return 0
    return int(metrics.get("epochs", 0)) if isinstance(metrics, dict) else 0


class TensorBoard:
    """Scalars per epoch and, at the end, the figures and the report into a TensorBoard log folder.

    ``tensorboard --logdir DIR`` shows them: ``objective/train``, ``elbo/test``,
    ``elbo/validation``, ``schedule/beta`` and ``time/seconds_per_epoch`` per epoch (:data:`SCALARS`),
    any ELBO term a row carries under ``terms/``, the evaluation's numbers under ``evaluation/``,
    every PNG of the run as an image and ``report.md`` as text.
    """

    def __init__(self, log_dir: str | os.PathLike):
        _summary_writer()  # a missing package is refused now, before any training
        self.log_dir = Path(log_dir)
        self._writer = None

    def __getstate__(self):
        return {**self.__dict__, "_writer": None}

    @property
    def writer(self):
        if self._writer is None:
            self._writer = _summary_writer()(log_dir=str(self.log_dir))
        return self._writer

    def __call__(self, epoch: int, row: dict) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(SCALARS.get(key, f"terms/{key}"), value, epoch)
        self.writer.flush()  # a worker process lives on after the run: nothing waits for close()

    def for_variant(self, name: str) -> TensorBoard:
        """The tracker of one of a study's runs: a sub-folder per run (``name`` may hold ``/``)."""
        return TensorBoard(self.log_dir.joinpath(*name.split("/")))

    def log_run(self, run_dir: str | os.PathLike) -> None:
        """The run's figures (as images), its evaluation's numbers and ``report.md``, at its last epoch."""
        import matplotlib.image

        run_dir = Path(run_dir)
        step = _last_epoch(run_dir)
        for key, value in _evaluation(run_dir).items():
            self.writer.add_scalar(f"evaluation/{key}", value, step)
        for tag, path in _figures(run_dir):
            self.writer.add_image(tag, matplotlib.image.imread(path)[..., :3], step, dataformats="HWC")
        for name in ("report.md", "comparison.md", "sweep.md"):
            if (run_dir / name).is_file():
                self.writer.add_text(Path(name).stem, (run_dir / name).read_text(encoding="utf-8"), step)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is absent
        raise UserError("--tensorboard needs the tensorboard package: pip install 'ppl_vae[tensorboard]'") from None
    return SummaryWriter


class MLflow:
    """An MLflow run per training run: metrics per epoch, then the config as params and the figures
    and report as artifacts.

    The tracking store is MLflow's own choice: ``MLFLOW_TRACKING_URI`` (a server ``http://...``, a
    database, or a folder ``file:///path``, which MLflow 3 opens only with
    ``MLFLOW_ALLOW_FILE_STORE=true``), and the experiment ``MLFLOW_EXPERIMENT_NAME`` (default
    ``ppl_vae``). Both are read, and the store opened, when the tracker is made: a store that
    cannot be opened is refused in one line before any training.
    """

    def __init__(
        self,
        run_name: str,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ):
        mlflow = _mlflow()
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ppl_vae"
        self.run_name, self.parent_run_id = run_name, parent_run_id
        self.tags = {"ppl_vae.run": run_name, **(tags or {})}
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self._client, self.run_id = None, None
        self.experiment_id = self._opened(lambda c: _experiment_id(c, self.experiment))

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            self._client = _mlflow().tracking.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _opened(self, use: Callable[[Any], Any]) -> Any:
        """``use(client)``; MLflow's refusal of the store as one line naming the store."""
        from mlflow.exceptions import MlflowException

        try:
            return use(self.client)
        except (MlflowException, ImportError, OSError) as err:
            reason = " ".join(str(err).split())
            raise UserError(
                f"--mlflow: cannot use the tracking store {self.tracking_uri}: {reason[:300]} "
                "(set MLFLOW_TRACKING_URI to a server, a database, or file:///path with MLFLOW_ALLOW_FILE_STORE=true)"
            ) from None

    def run(self) -> str:
        """The MLflow run's id: this tracker's, the one a worker process made for it, or a new one."""
        if self.run_id is None:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=" and ".join(f"tags.`{k}` = '{v}'" for k, v in self.tags.items()),
                max_results=1,
            )
            self.run_id = (
                found[0].info.run_id
                if found and self.parent_run_id  # a study's variant: one child run each, wherever it trained
                else self.client.create_run(self.experiment_id, run_name=self.run_name, tags=self.tags).info.run_id
            )
        return self.run_id

    def __call__(self, epoch: int, row: dict) -> None:
        from mlflow.entities import Metric

        stamp = _millis()
        metrics = [Metric(key, value, stamp, epoch) for key, value in _numbers(row).items()]
        self.client.log_batch(self.run(), metrics=metrics)

    def for_variant(self, name: str) -> MLflow:
        """The tracker of one of a study's runs: a child run of this one."""
        return MLflow(
            name, self.tracking_uri, self.experiment, parent_run_id=self.run(), tags={"ppl_vae.variant": name}
        )

    def log_run(self, run_dir: str | os.PathLike) -> None:
        """The config as params, the evaluation's numbers, the figures and the report as artifacts; the run ends."""
        from mlflow.entities import Metric, Param

        run_dir, run_id = Path(run_dir), self.run()
        params = [Param(k, v[:6000]) for k, v in flat_config(run_dir).items()]
        step, stamp = _last_epoch(run_dir), _millis()
        metrics = [Metric(f"evaluation.{k}", v, stamp, step) for k, v in _evaluation(run_dir).items()]
        for start in range(0, max(len(params), len(metrics)), 100):  # MLflow takes 100 params a batch
            self.client.log_batch(run_id, metrics=metrics[start : start + 100], params=params[start : start + 100])
        for name in (*REPORTS, "history.csv", "comparison.md", "comparison.json", "sweep.md", "sweep.json"):
            if (run_dir / name).is_file():
                self.client.log_artifact(run_id, str(run_dir / name))
        for tag, path in _figures(run_dir):
            self.client.log_artifact(run_id, str(path), tag.rpartition("/")[0])
        self.client.set_terminated(run_id)


def _mlflow():
    try:
        import mlflow
        import mlflow.tracking
    except ImportError:
        raise UserError("--mlflow needs MLflow: pip install 'ppl_vae[mlflow]'") from None
    return mlflow


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


class PerVariant:
    """A study's callback ``f(variant, epoch, row)``: one tracker per variant, from ``tracker.for_variant``.

    :meth:`log_study` then logs every variant's finished run and the study's own tables and figures.
    """

    def __init__(self, tracker: TensorBoard | MLflow):
        self.tracker = tracker
        self._each: dict[str, Any] = {}
        if isinstance(tracker, MLflow):
            tracker.run()  # the study's own run, made here: every worker's variants become its children

    def __getstate__(self):
        return {**self.__dict__, "_each": {}}

    def variant(self, name: str):
        if name not in self._each:
            self._each[name] = self.tracker.for_variant(name)
        return self._each[name]

    def __call__(self, variant: str, epoch: int, row: dict) -> None:
        self.variant(variant)(epoch, row)

    def log_study(self, out: str | os.PathLike, runs: dict[str, Path]) -> None:
        """Log each variant's run directory (``runs``: name -> directory), then the study folder ``out``."""
        for name, run_dir in runs.items():
            self.variant(name).log_run(run_dir)
        self.tracker.log_run(out)


def add_tracking_flags(parser) -> None:
    """``--tensorboard DIR`` and ``--mlflow`` on a command of the CLI."""
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="log to TensorBoard in DIR (a study: a sub-folder per run); needs pip install 'ppl_vae[tensorboard]'",
    )
    parser.add_argument(
        "--mlflow",
        action="store_true",
        help="log to MLflow at MLFLOW_TRACKING_URI (a study: a child run per run); needs pip install 'ppl_vae[mlflow]'",
    )


def trackers_from_args(args, name: str, study: str | None = None) -> list:
    """The trackers the flags ask for, each of which has refused a missing package or store already;
    for a ``study`` (its kind), each wrapped in :class:`PerVariant`. Under torchrun only rank 0 logs, as it
    alone writes the run."""
    if os.environ.get("RANK", "0") != "0":
        return []
    trackers: list = [TensorBoard(args.tensorboard)] if args.tensorboard else []
    if args.mlflow:
        trackers.append(MLflow(name, tags={"ppl_vae.study": study} if study else None))
    return [PerVariant(t) for t in trackers] if study else trackers
