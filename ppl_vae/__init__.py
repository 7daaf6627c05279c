"""ppl_vae: variational autoencoders as Pyro probabilistic programs, with a Bayesian-workflow bench.

The public names below are imported on first use, so ``import ppl_vae`` is cheap and loads
neither torch nor ArviZ nor matplotlib, and changes no global state.

Where things are (each sub-package's docstring says what it may import)::

    ppl_vae.models, ppl_vae.guides   the programs' parts (the rooms models/ and guides/)
    ppl_vae.errors, ppl_vae.contracts  layer 0: user errors; what a program, prior, head, likelihood is
    ppl_vae.storage, .data, .inference layer 1: files, data sets, log-weights/objectives/training
    ppl_vae.config, .options         layer 2: every option, defined once; what an option is
    ppl_vae.diagnostics, .plots      layer 2: estimators of a trained program; pictures
    ppl_vae.runs                     layer 3: build, fit, resume, load, evaluate, report
    ppl_vae.studies                  layer 4: comparisons and the σ sweep
    ppl_vae.cli, .flags              layer 5: the command line and its flags

>>> import ppl_vae
>>> run = ppl_vae.fit(ppl_vae.Config(), "runs/digits")      # doctest: +SKIP
>>> ppl_vae.load("runs/digits").sample(16).shape            # doctest: +SKIP
torch.Size([16, 64])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "GuideConfig",
    "TrainConfig",
    "EvalConfig",
    "load_config",
    "UserError",
    "CheckpointError",
    "Run",
    "fit",
    "load",
    "evaluate_run",
    "Comparison",
    "compare",
    "sigma_sweep",
]
__version__ = "0.1.0"

_WHERE = {
    "Config": "config",
    "DataConfig": "config",
    "ModelConfig": "config",
    "GuideConfig": "config",
    "TrainConfig": "config",
    "EvalConfig": "config",
    "load_config": "config",
    "UserError": "errors",
    "CheckpointError": "errors",
    "Run": "runs.run",
    "fit": "runs.fit",
    "load": "runs.load",
    "evaluate_run": "runs.evaluation",
    "Comparison": "studies.compare",
    "compare": "studies.compare",
    "sigma_sweep": "studies.sweep",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'ppl_vae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .config import Config, DataConfig, EvalConfig, GuideConfig, ModelConfig, TrainConfig, load_config
    from .errors import CheckpointError, UserError
    from .runs.evaluation import evaluate_run
    from .runs.fit import fit
    from .runs.load import load
    from .runs.run import Run
    from .studies.compare import Comparison, compare
    from .studies.sweep import sigma_sweep
