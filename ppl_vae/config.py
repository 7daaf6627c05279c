"""Typed configuration: every option is defined once, as a dataclass field made by :func:`option`.

The field holds the option's default and its :class:`Option`: help, command-line flag, range
and the registry its names come from. Everything else is generated from it: the flags of the
command line (:mod:`ppl_vae.cli`), the keys of a TOML file, the keys of ``compare --grid``,
the one coercion of a value (:func:`~ppl_vae.options.coerce`) and the checks of
:meth:`Config.validate`, which run before any work starts. What an option is, and how a value
is coerced and checked, is :mod:`ppl_vae.options`'s; this module says which options there are,
which combine, and how a config is read from and written to TOML.

A run's config has the sections ``[data]``, ``[model]``, ``[guide]`` and ``[train]``;
:class:`EvalConfig` holds the options of the workflow analysis (``evaluate``, ``compare``,
``sigma-sweep``), :class:`SampleConfig` those of ``sample`` and :class:`StudyConfig` those of a
study's design (``compare --seeds``): every number any command takes has its range here.

Layer 2 — may import: ``ppl_vae.options``, ``ppl_vae.names`` (the registries' names, without
torch), the thresholds of ``ppl_vae.diagnostics.verdicts`` (defaults), ``ppl_vae.errors``,
``ppl_vae.storage`` (to read files). Nothing it imports imports torch: the command line's parser
is built from it in a blink.

Example:
    >>> config = Config()
    >>> config.model.sigma = 0.2
    >>> config.validate().model.sigma
    0.2
    >>> resolve_key("latent-dim")
    ('model', 'latent_dim')
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .diagnostics.verdicts import PRACTICAL_EQUIVALENCE
from .errors import UserError
from .inference.steps import COMPILE_STEPS, REPLAY_STEPS, SAMPLER_CHUNKS
from .names import names as _names
from .options import Option, Section, coerce, flag_of, is_program_spec, option, options_of, parse_text
from .storage.atomic import read_bounded

__all__ = [
    "Option",
    "option",
    "DataConfig",
    "ModelConfig",
    "GuideConfig",
    "TrainConfig",
    "EvalConfig",
    "SampleConfig",
    "StudyConfig",
    "Config",
    "SECTIONS",
    "coerce",
    "parse_text",
    "options_of",
    "flag_of",
    "resolve_key",
    "from_dict",
    "load_config",
    "get_value",
    "to_toml",
    "is_program_spec",
]

MAX_SEED = 2**32 - 1  # numpy's legacy seeding (pyro.set_rng_seed) takes 32 bits
DEVICES = ("auto", "cpu", "cuda")
SWITCH = ("auto", "on", "off")


@dataclass
class DataConfig(Section):
    where: ClassVar[str] = "data"

    name: str = option(
        "digits",
        "data set: a registered name or a path to a .npy/.npz file",
        flag="--data",
        names=lambda: _names("DATASETS"),
        also="data-file",
        noun="data set",
    )
    root: str = option("", "folder or file holding the data set ('' = look in the usual places)", flag="--data-root")
    download: bool = option(False, "let torchvision download MNIST-like data into --data-root")
    test_fraction: float = option(
        0.2, "held-out share for data sets without a split", low=0.0, high=1.0, open_low=True, open_high=True
    )
    split_seed: int = option(0, "seed of that split (fixed, independent of the training seed)", low=0, high=MAX_SEED)
    limit: int = option(0, "keep only the first N training points (0 = all)", low=0, high=2**40)
    labels: str = option(
        "0",
        "keep the labels of N training points, a seeded draw balanced over classes (N, or all); "
        "programs taking y get them",
        also="count",
    )
    binarize: bool = option(
        False,
        "dynamic binarization: training rows x ~ Bernoulli(pixel) at every draw; test and validation rows once, "
        "with a fixed seed",
    )
    validation: int = option(
        0,
        "hold out the last N training rows for validation (0 = none; a data set with its own validation split "
        "uses that one)",
        low=0,
        high=2**40,
    )


@dataclass
class ModelConfig(Section):
    where: ClassVar[str] = "model"

    likelihood: str = option("normal", "observation model p(x|z)", names=lambda: _names("LIKELIHOODS"))
    sigma: float = option(0.1, "σ of the Normal likelihood (fixed), or its initial value (learned)", low=1e-6, high=1e6)
    prior: str = option("standard", "prior p(z)", names=lambda: _names("PRIORS"))
    latent_dim: int = option(8, "dimension L of z", low=1, high=65536)
    hidden_dim: int = option(256, "width of encoder and decoder hidden layers", low=1, high=65536)
    hidden_layers: int = option(1, "hidden layers in each MLP", low=1, high=64)
    network: str = option(
        "mlp",
        "encoder/decoder networks (linear: an affine decoder, probabilistic PCA's model)",
        names=lambda: _names("NETWORKS"),
    )
    n_components: int = option(
        16, "mixture components (mog) / pseudo-inputs (vamp)", flag="--components", low=1, high=100_000
    )
    flows: int = option(2, "transforms in the flow prior", flag="--prior-flows", low=0, high=64)
    stochastic_layers: int = option(
        1,
        "stochastic layers: 1 (z) or 2 (z1, z2: the VampPrior paper's hierarchical VAE, the prior on z2)",
        low=1,
        high=2,
    )
    clip_logvar: bool = option(
        False, "Gaussian heads' log-variance clipped to [-6, 2] by a hardtanh (the VampPrior paper's heads)"
    )
    pseudo_inputs: str = option(
        "data",
        "VampPrior pseudo-inputs: data (training rows) | hardtanh (hardtanh(W), W ~ N(mean, std²): the paper's)",
        names=lambda: _names("PSEUDO_INPUTS"),
        noun="pseudo-input parameterisation",
    )
    pseudo_mean: float = option(0.05, "initial mean of W for hardtanh pseudo-inputs", low=-1e3, high=1e3)
    pseudo_std: float = option(0.01, "initial standard deviation of W for hardtanh pseudo-inputs", low=0.0, high=1e3)
    init: str = option(
        "default",
        "weight initialisation: default (each layer's own) | he (every linear layer He-normal, heads and output "
        "included: the VampPrior paper's code)",
        names=lambda: _names("INITS"),
        noun="initialisation",
    )
    decoder_prior: str = option(
        "none",
        "none | normal: a Bayesian decoder, N(0, 1) on the weights and biases of the decoder's output layer "
        "(global latents) with a mean-field Gaussian guide on them (Kingma & Welling 2014, appendix F)",
        names=lambda: _names("DECODER_PRIORS"),
        noun="decoder prior",
    )
    program: str = option("", "a user's own model program, path/to/file.py:factory", flag="--model", also="program")
    data_plate: str = option(
        "",
        "the name of the programs' plate over the batch ('' = the one plate whose size follows x.shape[0]; "
        "'data' where several do)",
    )


@dataclass
class GuideConfig(Section):
    where: ClassVar[str] = "guide"

    name: str = option(
        "diagonal",
        "posterior family q(z|x), or a user's guide program path/to/file.py:factory",
        flag="--guide",
        names=lambda: _names("GUIDES"),
        also="program",
        noun="guide",
    )
    flows: int = option(2, "transforms in a flow guide", low=0, high=64)
    rank: int = option(2, "rank of the low-rank guide", low=1, high=4096)


@dataclass
class TrainConfig(Section):
    where: ClassVar[str] = "train"

    epochs: int = option(100, "training epochs", low=1, high=1_000_000)
    batch_size: int = option(128, "minibatch size", low=1, high=2**24)
    lr: float = option(1e-3, "Adam learning rate", low=0.0, high=10.0, open_low=True)
    optimizer: str = option(
        "adam",
        "adam | adamnormgrad (each parameter tensor's gradient divided by its L2 norm, then Adam: the VampPrior "
        "paper's code)",
        names=lambda: _names("OPTIMIZERS"),
    )
    lr_schedule: str = option(
        "constant", "learning-rate schedule", names=lambda: _names("LR_SCHEDULES"), noun="learning-rate schedule"
    )
    lr_final: float = option(0.0, "learning rate at the end of a decaying schedule", low=0.0, high=10.0)
    seed: int = option(0, "random seed", low=0, high=MAX_SEED)
    device: str = option(
        "auto", "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N", names=lambda: DEVICES, also="device"
    )
    elbo: str = option("trace", "training objective", names=lambda: _names("ELBOS"), noun="ELBO")
    particles: int = option(1, "K Monte Carlo samples of the ELBO (vectorized)", low=1, high=2**20)
    beta: float = option(1.0, "weight β of the latent (KL) terms", low=0.0, high=1e6)
    anneal: str = option("none", "warm-up of β", names=lambda: _names("ANNEALING"), noun="annealing")
    anneal_epochs: int = option(10, "length of a warm-up (or of one cycle) in epochs", low=1, high=1_000_000)
    compile: str = option(
        "auto",
        "record the training step as a tensor graph, compile and replay it: on, off, or auto (replayed from "
        f"{REPLAY_STEPS} steps, compiled from {COMPILE_STEPS}, when the program can be recorded)",
        names=lambda: SWITCH,
        switch=True,
    )
    patience: int = option(
        0,
        "early stopping: stop when the validation ELBO has not improved for N epochs after the β warm-up, and "
        "keep the best epoch's weights (0 = off; needs a validation split)",
        low=0,
        high=1_000_000,
    )
    min_epochs: int = option(
        0,
        "early stopping never stops before this many epochs (the VampPrior paper's protocol: 151)",
        low=0,
        high=1_000_000,
    )
    checkpoint_every: int = option(1, "epochs between checkpoints", low=1, high=1_000_000)
    checkpoint_steps: int = option(0, "also checkpoint every N optimizer steps (0 = off)", low=0, high=2**40)
    pyro_validation: bool = option(False, "Pyro's shape and support checks on every step (always on for the first)")


@dataclass
class EvalConfig(Section):
    """Options of the workflow analysis of a trained run (not part of a run's config)."""

    where: ClassVar[str] = "evaluate"

    k: int = option(1000, "importance samples per test point", low=2, high=10_000_000)
    points: int = option(0, "evaluate only the first N test points (0 = all)", low=0, high=2**40)
    gap_points: int = option(100, "test points whose guides are refined for the gaps (0 = skip)", low=0, high=1_000_000)
    gap_steps: int = option(300, "optimisation steps of the refined local guides", low=1, high=1_000_000)
    sbc_simulations: int = option(500, "simulated (z, x) pairs for calibration (0 = skip)", low=0, high=1_000_000)
    sbc_draws: int = option(99, "guide draws ranked against each simulated z", low=1, high=100_000)
    idata_points: int = option(200, "test points stored in inference_data.nc", low=1, high=1_000_000)
    idata_draws: int = option(20, "draws per point stored in inference_data.nc", low=1, high=100_000)
    global_draws: int = option(
        10,
        "draws θ ~ q(θ) of a program's global latents (sites outside the data plate), shared by all test points; "
        "log p(x) is then the posterior predictive (programs without them: unused)",
        low=2,
        high=100_000,
    )
    seed: int = option(0, "seed of the evaluation draws", flag="--eval-seed", low=0, high=MAX_SEED)
    compile_sampler: str = option(
        "auto",
        "record the importance sampler's chunk as a tensor graph, compile and replay it: on, off, or auto "
        f"(from {SAMPLER_CHUNKS} chunks)",
        names=lambda: SWITCH,
        switch=True,
    )


@dataclass
class SampleConfig(Section):
    """Options of ``sample`` (not part of a run's config)."""

    where: ClassVar[str] = "sample"

    n: int = option(64, "decodings of z ~ p(z) to draw", low=1, high=10_000)
    seed: int = option(0, "seed of the draws", low=0, high=MAX_SEED)


@dataclass
class StudyConfig(Section):
    """Options of ``compare`` and ``sigma-sweep`` that are not part of a variant's config."""

    where: ClassVar[str] = "study"

    seeds: int = option(1, "train every variant with this many seeds (the config's seed, +1, ...)", low=1, high=1000)
    equivalence: float = option(
        PRACTICAL_EQUIVALENCE,
        "nats per datapoint under which a lead in log p(x) is too small to matter: the variants are called equal "
        "in practice, however small its uncertainty",
        low=0.0,
        high=1e6,
    )


EXECUTOR_KINDS = ("local", "ray")


@dataclass
class ExecutorConfig(Section):
    """Where the runs of ``compare`` and ``sigma-sweep`` are trained (:mod:`ppl_vae.studies.executors`)."""

    where: ClassVar[str] = "executor"

    jobs: int = option(1, "train and evaluate N runs at once, in local worker processes", low=1, high=1024)
    executor: str = option(
        "local",
        "where a study's runs are trained: local (this machine) or ray (a Ray cluster; pip install 'ppl_vae[ray]')",
        names=lambda: EXECUTOR_KINDS,
    )
    address: str = option("", "the Ray cluster to join: HOST:PORT of `ray start --head` ('' = start a local one)")
    cpus_per_job: float = option(1.0, "CPUs each Ray task asks for", low=0.0, high=4096.0, open_low=True)
    gpus_per_job: float = option(0.0, "GPUs each Ray task asks for", low=0.0, high=1024.0)

    def validate(self) -> ExecutorConfig:
        super().validate()
        if self.address and self.executor != "ray":
            raise UserError("--address names a Ray cluster: use it with --executor ray")
        return self


@dataclass
class Config(Section):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        """Check every field (types, ranges, registry names) and their combinations. Returns self."""
        for section in SECTIONS:
            getattr(self, section).validate()
        t, m, g = self.train, self.model, self.guide
        if t.lr_final > t.lr:
            raise UserError(f"lr_final must lie in [0, lr = {t.lr}], got {t.lr_final}")
        if m.prior == "vamp" and (m.program or is_program_spec(g.name)):
            raise UserError("the vamp prior needs a built-in amortized guide (its encoder), not a user program")
        if m.program:  # the user's model brings its own prior, likelihood (and its σ) and guide
            unused = [
                f"--{flag} {value}"
                for flag, value, default in (
                    ("prior", m.prior, ModelConfig().prior),
                    ("likelihood", m.likelihood, ModelConfig().likelihood),
                    ("sigma", m.sigma, ModelConfig().sigma),
                    ("guide", g.name, GuideConfig().name),
                )
                if value != default and not (isinstance(value, str) and is_program_spec(value))
            ]
            if unused:
                raise UserError(
                    f"{', '.join(unused)} would not be used: the program {m.program} brings its own prior, "
                    f"likelihood (σ included) and guide; drop {'them' if len(unused) > 1 else 'it'} "
                    "(a guide of your own: --guide file.py:factory)"
                )
        if m.decoder_prior != "none":
            if m.program or is_program_spec(g.name):
                raise UserError(
                    "--decoder-prior builds the canonical VAE and its guide; a user program puts its own prior on "
                    "its weights (sites outside the data plate)"
                )
            if m.stochastic_layers == 2 or m.network not in ("mlp", "linear", "gated"):
                raise UserError(
                    "--decoder-prior needs one stochastic layer and a decoder that ends in a linear layer "
                    f"(--network mlp, linear or gated), not --network {m.network} with {m.stochastic_layers} layer(s)"
                )
        if m.stochastic_layers == 2:
            if m.program or is_program_spec(g.name):
                raise UserError("--stochastic-layers 2 builds its own programs; drop --model/--guide file.py:factory")
            if m.network not in _names("LAYERS"):
                raise UserError(
                    f"--stochastic-layers 2 is built from dense layers; use --network {' or '.join(_names('LAYERS'))}, "
                    f"not {m.network!r}"
                )
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "guide": GuideConfig, "train": TrainConfig}
"""TOML section of a run's config -> its dataclass."""


def resolve_key(key: str, sections: dict[str, type] = SECTIONS) -> tuple[str, str]:
    """``(section, field)`` for a key: ``section.field``, a flag without dashes (``latent-dim``,
    ``guide``, ``prior``) or a field name that only one section has."""
    if "." in key:
        section, _, name = key.partition(".")
        if section in sections and any(n == name for n, _, _ in options_of(sections[section])):
            return section, name
        raise UserError(f"{key!r} is not a config option; use section.key, e.g. model.sigma")
    by_flag = [(s, n) for s, cls in sections.items() for n, _, o in options_of(cls) if flag_of(n, o) == "--" + key]
    if len(by_flag) == 1:
        return by_flag[0]
    by_name = [(s, n) for s, cls in sections.items() for n, _, _ in options_of(cls) if n == key]
    if len(by_name) == 1:
        return by_name[0]
    raise UserError(f"{key!r} is unknown or ambiguous; use section.key, e.g. model.sigma")


def set_value(config: Config, key: str, value: Any) -> None:
    """Set the option named by ``key`` (see :func:`resolve_key`) to ``value``, coerced."""
    section, name = resolve_key(key)
    target = getattr(config, section)
    _, kind, opt = next(f for f in options_of(type(target)) if f[0] == name)
    setattr(target, name, coerce(f"{section}.{name}", kind, value, opt))


def get_value(config: Config, key: str) -> Any:
    """The value of the option named by ``key`` (see :func:`resolve_key`)."""
    section, name = resolve_key(key)
    return getattr(getattr(config, section), name)


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a :class:`Config` from nested dicts (on top of ``base``), refusing unknown sections, keys and types."""
    if not isinstance(data, dict):
        raise UserError("a config must be a table of sections")
    config = copy.deepcopy(base) if base is not None else Config()
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section [{section}]; expected one of {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"config section [{section}] must be a table")
        target = getattr(config, section)
        kinds = {name: (kind, opt) for name, kind, opt in options_of(type(target))}
        for key, value in values.items():
            if key not in kinds:
                raise UserError(f"unknown key {key!r} in [{section}]; expected one of {', '.join(kinds)}")
            kind, opt = kinds[key]
            setattr(target, key, coerce(f"[{section}] {key}", kind, value, opt))
    return config


MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read a TOML config file (its keys set on top of ``base``, or of the defaults)."""
    path = Path(path)
    raw = read_bounded(path, "config file", MAX_CONFIG_BYTES)
    try:
        # an editor's byte-order mark is not part of the TOML
        data = tomllib.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"config file {path} is not valid TOML: {err}") from None
    return from_dict(data, base)


def to_toml(config: Config) -> str:
    """The resolved config as TOML text (round-trips through :func:`load_config`), written by ``tomli-w``."""
    import tomli_w

    return tomli_w.dumps(config.to_dict())
