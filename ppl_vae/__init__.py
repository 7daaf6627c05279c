"""ppl_vae: variational autoencoders as Pyro probabilistic programs, with a Bayesian-workflow bench.

>>> import ppl_vae
>>> run = ppl_vae.fit(ppl_vae.Config(), "runs/digits")      # doctest: +SKIP
>>> ppl_vae.load("runs/digits").sample(16).shape            # doctest: +SKIP
torch.Size([16, 64])
"""

from .config import Config, DataConfig, GuideConfig, ModelConfig, TrainConfig, load_config
from .errors import CheckpointError, UserError
from .runs.evaluation import WorkflowConfig, evaluate_run
from .runs.run import Run, fit, load
from .studies.compare import Comparison, compare
from .studies.sweep import sigma_sweep

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "GuideConfig",
    "TrainConfig",
    "load_config",
    "UserError",
    "CheckpointError",
    "Run",
    "fit",
    "load",
    "WorkflowConfig",
    "evaluate_run",
    "Comparison",
    "compare",
    "sigma_sweep",
]
__version__ = "0.1.0"
