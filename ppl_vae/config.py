"""Typed configuration: one small dataclass per concern, read from TOML, overridden by the CLI.

A TOML file has the sections ``[data]``, ``[model]``, ``[guide]`` and ``[train]``, each
key a field below. Names are validated against the registries where a run is built,
not here: configs have no side effects.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["DataConfig", "ModelConfig", "GuideConfig", "TrainConfig", "Config", "load_config", "to_toml"]


@dataclass
class DataConfig:
    name: str = "digits"  # digits | mnist | fashion-mnist | frey | path to .npy/.npz
    root: str = ""  # folder or file for mnist/fashion-mnist/frey ("" = look in the usual places)
    download: bool = False  # let torchvision download MNIST-like sets into root
    test_fraction: float = 0.2  # held-out share for data sets without a split
    split_seed: int = 0  # seed of that split (fixed, independent of the training seed)
    limit: int = 0  # keep only the first N training points (0 = all)
    binarize: bool = False  # dynamic binarization: x ~ Bernoulli(pixel) at every draw


@dataclass
class ModelConfig:
    likelihood: str = "normal"  # see ppl_vae.models.LIKELIHOODS
    sigma: float = 0.1  # σ of the Normal likelihood (fixed) or its initial value (learned)
    prior: str = "standard"  # see ppl_vae.models.PRIORS
    latent_dim: int = 8
    hidden_dim: int = 256  # width of encoder and decoder hidden layers
    hidden_layers: int = 1  # hidden layers in each MLP
    network: str = "mlp"  # mlp | conv
    n_components: int = 16  # mixture components (mog) / pseudo-inputs (vamp)
    flows: int = 2  # transforms in a flow prior
    program: str = ""  # path/to/file.py:factory, a user's own model program


@dataclass
class GuideConfig:
    name: str = "diagonal"  # see ppl_vae.guides.GUIDES
    flows: int = 2  # transforms in a flow guide
    rank: int = 2  # rank of the low-rank guide
    program: str = ""  # path/to/file.py:factory, a user's own guide program


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (from lr down to lr_final over the epochs)
    lr_final: float = 0.0  # learning rate at the end of a decaying schedule
    seed: int = 0
    device: str = "cpu"
    elbo: str = "trace"  # trace | meanfield | iwae
    particles: int = 1  # K Monte Carlo samples (vectorized)
    beta: float = 1.0  # weight of the latent (KL) terms
    anneal: str = "none"  # none | linear | cyclical warm-up of beta
    anneal_epochs: int = 10  # length of a warm-up (or of one cycle)
    compile: bool = False  # record a step once and replay it (ppl_vae.inference.compiled); reparameterized programs
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_steps: int = 0  # also checkpoint every N optimizer steps (0 = off)
    pyro_validation: bool = False  # Pyro's shape/support checks on every step (always on for the first)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        """Check the numbers (names are checked by the registries). Returns self."""
        positive_ints = {
            "model.latent_dim": self.model.latent_dim,
            "model.hidden_dim": self.model.hidden_dim,
            "model.hidden_layers": self.model.hidden_layers,
            "model.n_components": self.model.n_components,
            "train.epochs": self.train.epochs,
            "train.batch_size": self.train.batch_size,
            "train.particles": self.train.particles,
            "train.checkpoint_every": self.train.checkpoint_every,
            "guide.rank": self.guide.rank,
            "train.anneal_epochs": self.train.anneal_epochs,
        }
        for key, value in positive_ints.items():
            if value < 1:
                raise UserError(f"{key} must be >= 1, got {value}")
        for key, value in {
            "model.flows": self.model.flows,
            "train.checkpoint_steps": self.train.checkpoint_steps,
            "guide.flows": self.guide.flows,
            "data.limit": self.data.limit,
        }.items():
            if value < 0:
                raise UserError(f"{key} must be >= 0, got {value}")
        if not (math.isfinite(self.model.sigma) and self.model.sigma > 0):
            raise UserError(f"sigma must be a finite number > 0, got {self.model.sigma}")
        if not (math.isfinite(self.train.lr) and self.train.lr > 0):
            raise UserError(f"lr must be a finite number > 0, got {self.train.lr}")
        if not (math.isfinite(self.train.lr_final) and 0 <= self.train.lr_final <= self.train.lr):
            raise UserError(f"lr_final must lie in [0, lr = {self.train.lr}], got {self.train.lr_final}")
        if not (math.isfinite(self.train.beta) and self.train.beta >= 0):
            raise UserError(f"beta must be a finite number >= 0, got {self.train.beta}")
        if not 0 < self.data.test_fraction < 1:
            raise UserError(f"test_fraction must lie in (0, 1), got {self.data.test_fraction}")
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _coerce(section: str, key: str, value: Any, kind: type) -> Any:
    where = f"[{section}] {key}"
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where} must be of type {kind.__name__}, got {value!r}")


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a :class:`Config` from nested dicts (on top of ``base``), refusing unknown sections, keys and types."""
    config = copy.deepcopy(base) if base is not None else Config()
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section [{section}]; expected one of {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"config section [{section}] must be a table")
        target = getattr(config, section)
        hints = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in hints:
                raise UserError(f"unknown key {key!r} in [{section}]; expected one of {', '.join(hints)}")
            setattr(target, key, _coerce(section, key, value, hints[key]))
    return config


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read a TOML config file (its keys set on top of ``base``, or of the defaults)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"config file {path} is not valid TOML: {err}") from None
    return from_dict(data, base)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(config: Config) -> str:
    """The resolved config as TOML text (round-trips through :func:`load_config`)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
