"""Train and evaluate a set of named variants on equal terms, resumably.

Each variant is a :class:`~ppl_vae.config.Config`; all share the data split, seeds, training
budget, test points and K. A variant whose run directory already holds the same resolved
config and a finished evaluation at the same settings is reused, so an interrupted study
retrains only what did not finish.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..config import Config, EvalConfig, to_toml
from ..data.datasets import Dataset
from ..errors import UserError
from ..runs.evaluation import evaluate_run
from ..runs.run import Run, fit, load

__all__ = ["run_variants", "run_path", "safe_name"]


def safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if not cleaned or cleaned.startswith("."):
        raise UserError(f"variant name {name!r} cannot be used as a directory name")
    return cleaned


def run_path(out: Path, name: str) -> Path:
    """Where the run of variant ``name`` lives: ``out/runs/<name>``, each ``/``-separated part made safe."""
    return Path(out, "runs", *(safe_name(part) for part in name.split("/")))


def _finished(run_dir: Path, config: Config, workflow: EvalConfig) -> bool:
    try:
        same_config = (run_dir / "config.toml").read_text() == to_toml(config)
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        settings = json.loads((run_dir / "evaluation_settings.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return (
        same_config and (run_dir / "metrics.json").is_file() and settings == asdict(workflow) and "log_px" in evaluation
    )


def run_variants(
    variants: dict[str, Config], out: str | Path, workflow: EvalConfig, data: Dataset, progress: bool = True
) -> dict[str, tuple[Run, dict]]:
    """Fit (or reuse) and evaluate every variant under ``out/runs/<name>``; return runs and evaluations."""
    from ..storage.atomic import write_json

    out = Path(out)
    results = {}
    for name, config in tqdm(variants.items(), desc="variants", disable=not progress):
        run_dir = run_path(out, name)
        config.validate()
        if _finished(run_dir, config, workflow):
            run = load(run_dir)
            run.data = data
        else:
            run = fit(config, run_dir, overwrite=True, progress=False, data=data)
            evaluate_run(run, workflow, progress=False)
            write_json(run_dir / "evaluation_settings.json", asdict(workflow))
        results[name] = (run, json.loads((run_dir / "evaluation.json").read_text()))
    return results
