"""The checks a run makes before it writes anything: every input is refused here or not at all.

The config is validated, the program files are made absolute (a run finds them from anywhere),
the data set's support is checked against the likelihood, the memory a step needs against the
device, the program is built and traced once on two training rows (a foreign ``pyro.param``,
a guide whose latent sites differ from its model's), and the disk must hold two checkpoints.
:func:`preflight` runs them all without training, for a study that checks every variant first.

Layer 3 — imports ``config``, ``data``, ``inference`` and the run's build and budget modules.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pyro
import torch

from ..config import Config, is_program_spec
from ..data.datasets import Dataset
from ..errors import StorageError
from ..inference.importance import rng_untouched, trace_pair
from ..inference.trial import check_latent_names, check_params
from .budget import check_memory, human, training_bytes
from .build import ModelAndGuide, build_program, check_support
from .run import resolve_device
from .sources import SourceFile, read_named, user_code_errors

__all__ = [
    "preflight",
    "check_inputs",
    "build_checked",
    "check_latent_sites",
    "check_disk",
    "with_absolute_sources",
]


def check_latent_sites(program: ModelAndGuide, x: torch.Tensor) -> None:
    """Refuse a guide that does not sample its model's latent sites under the same names (the trial's rule,
    :func:`~ppl_vae.inference.trial.check_latent_names`), traced once on two rows, drawing nothing from the RNG."""
    with rng_untouched(x), pyro.validation_enabled(False):
        guide_trace, model_trace = trace_pair(program.model, program.guide, x[:2])
    check_latent_names("the program", guide_trace, model_trace)


def check_inputs(config: Config, data: Dataset, device: torch.device) -> None:
    """The data's values fit the likelihood, and a training step's memory fits ``device``."""
    check_support(config, data)
    check_memory(
        "training",
        training_bytes(config, data.data_dim, len(data.train), torch.is_tensor(data.train)),
        device,
        "lower --particles, --batch-size or --hidden-dim",
    )


def build_checked(config: Config, data: Dataset, sources: dict[str, SourceFile], device: torch.device) -> ModelAndGuide:
    """The program, built and traced once on two training rows (its latent sites checked)."""
    program = build_program(
        config, data.data_dim, data.image_shape, init_data=data.train, num_classes=data.num_classes, sources=sources
    )
    program = program.to(device)
    if not program.takes("y"):  # a program given labels is tried with them by the trainer's trial batches
        check_params(program, data.train[:2].to(device))  # first: a foreign pyro.param would enter the store
        check_latent_sites(program, data.train[:2].to(device))
    return program


def preflight(config: Config, data: Dataset) -> None:
    """The checks :func:`fit` makes before it writes anything, without training or writing.

    A study runs them for every variant before it trains the first, so a bad variant is
    refused before any other is trained.
    """
    config = with_absolute_sources(config.validate())
    sources = read_named(config)
    device = resolve_device(config.train.device)
    check_inputs(config, data, device)
    with user_code_errors(sources), torch.random.fork_rng():
        build_checked(config, data, sources, device)


def check_disk(directory: Path, program: torch.nn.Module) -> None:
    """Refuse before training when the disk cannot hold two checkpoints (weights, Adam's moments)."""
    n = sum(t.numel() * t.element_size() for t in program.state_dict().values())
    needed = 2 * 3 * n + (4 << 20)  # two generations coexist while one is written; figures and reports
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise StorageError(
            f"{directory.parent} has {human(free)} free; this run's checkpoints need about {human(needed)}"
        )


def _absolute(spec: str) -> str:
    path, _, attr = spec.rpartition(":")
    return f"{Path(path).resolve()}:{attr}"


def with_absolute_sources(config: Config) -> Config:
    """A copy of ``config`` whose program paths are absolute, so the run finds them from anywhere.

    A copy: the caller's config is left as it was given (a study compares it with finished runs).
    """
    config = copy.deepcopy(config)
    if config.model.program:
        config.model.program = _absolute(config.model.program)
    if is_program_spec(config.guide.name):
        config.guide.name = _absolute(config.guide.name)
    return config
