"""Build the model/guide pair a config names: registries for the parts, or the user's own program.

The bench only ever sees a :class:`ModelAndGuide`: a module holding a model module and a guide
module, with ``model(x, **inputs)`` and ``guide(x, **inputs)``; each part gets the inputs its
own signature names (:func:`ppl_vae.contracts.accepted_inputs`). Everything the bench does
with them goes through Pyro's effect handlers.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

from ..config import Config, is_program_spec
from ..contracts import DATA_PLATE, accepted_inputs, select_inputs
from ..errors import UserError
from ..guides import (
    GUIDES,
    PAPER_LOG_VAR_RANGE,
    AmortizedGuide,
    ConditionalEncoder,
    Encoder,
    HierarchicalGuide,
    MeanFieldNormal,
    posterior_head,
)
from ..inference.plates import RenamePlate
from ..inference.trial import check_module
from ..models import (
    DECODER_PRIORS,
    INITS,
    LAYERS,
    LIKELIHOODS,
    NETWORKS,
    PRIORS,
    PSEUDO_INPUTS,
    VAE,
    HierarchicalVAE,
    Join,
    split_output,
    stack,
)
from .sources import SourceFile, import_factory, named_file

__all__ = ["ModelAndGuide", "build_program", "check_support", "load_factory"]


class ModelAndGuide(nn.Module):
    """The pair the bench trains and saves: ``model_module.model`` and ``guide_module.guide``.

    ``model_module`` and ``guide_module`` are the modules as built (a user's factory returned
    them: ``Run.model_module`` names them). ``data_plate`` is the name the programs give their
    plate over the batch; where it is not :data:`~ppl_vae.contracts.DATA_PLATE`, the bench's
    handlers see it under that name (:class:`~ppl_vae.inference.plates.RenamePlate`).
    """

    def __init__(self, model_module: nn.Module, guide_module: nn.Module, data_plate: str = DATA_PLATE):
        super().__init__()
        self.model_module = model_module
        self.guide_module = guide_module
        self.data_plate = data_plate
        self._model_inputs = accepted_inputs(model_module.model)
        self._guide_inputs = accepted_inputs(guide_module.guide)

    def _plate(self):
        return contextlib.nullcontext() if self.data_plate == DATA_PLATE else RenamePlate(self.data_plate)

    def model(self, x: torch.Tensor, **inputs) -> None:
        with self._plate():
            return self.model_module.model(x, **select_inputs(self._model_inputs, inputs))

    def guide(self, x: torch.Tensor, **inputs) -> None:
        with self._plate():
            return self.guide_module.guide(x, **select_inputs(self._guide_inputs, inputs))

    def takes(self, name: str) -> bool:
        """Whether the model or the guide names the input ``name`` (``y``: labels)."""
        return any(accepted is None or name in accepted for accepted in (self._model_inputs, self._guide_inputs))


def _pick(registry: dict, name: str, what: str):
    if name not in registry:
        raise UserError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def load_factory(spec: str, role: str, sources: dict[str, SourceFile] | None = None) -> Callable:
    """The factory of ``path/to/file.py:factory`` (the user's own program).

    ``sources`` holds code already read (the run's stored copy, or the file read once at
    ``fit``); without it the file ``spec`` names is read now.
    """
    path, sep, attr = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not attr:
        raise UserError(f"--{role} program must look like path/to/file.py:factory, got {spec!r}")
    source = (sources or {}).get(role)
    if source is None or source.spec != spec:
        source = named_file(role, spec)
    return import_factory(source)


def _user_module(
    spec: str, role: str, data_dim: int, latent_dim: int, sources: dict[str, SourceFile] | None, **facts
) -> nn.Module:
    """The module ``factory(data_dim, latent_dim, **facts)`` returns, ``facts`` limited to those it names."""
    factory = load_factory(spec, role, sources)
    facts = select_inputs(accepted_inputs(factory), facts)
    module = factory(data_dim, latent_dim, **facts)  # what it raises, user_code_errors says in one line
    return check_module(module, role, spec)


def build_program(
    cfg: Config,
    data_dim: int,
    image_shape: tuple[int, ...],
    init_data: torch.Tensor | None = None,
    num_classes: int | None = None,
    sources: dict[str, SourceFile] | None = None,
) -> ModelAndGuide:
    """Build the :class:`ModelAndGuide` described by ``cfg`` for data of ``data_dim`` values.

    Args:
        init_data: training rows used to initialise data-dependent parameters (the VampPrior's
            pseudo-inputs); ``None`` when the weights will be loaded from a checkpoint anyway.
        num_classes: C of a labelled data set, for user factories that name ``num_classes``.
        sources: the program files ``cfg`` names, already read (see
            :mod:`ppl_vae.runs.sources`); without it the named files are read.
    """
    program = _program(cfg, data_dim, image_shape, init_data, num_classes, sources)
    _pick(INITS, cfg.model.init, "initialisation")(program)
    return program


def _program(cfg, data_dim, image_shape, init_data, num_classes, sources) -> ModelAndGuide:
    m, g = cfg.model, cfg.guide
    facts = {"num_classes": num_classes, "image_shape": tuple(image_shape)}
    if m.stochastic_layers == 2:
        return _hierarchical_program(cfg, data_dim, image_shape, init_data)
    model_module = _user_module(m.program, "model", data_dim, m.latent_dim, sources, **facts) if m.program else None
    encoder_net, decoder_net = _pick(NETWORKS, m.network, "network")
    if is_program_spec(g.name):
        guide_module = _user_module(g.name, "guide", data_dim, m.latent_dim, sources, **facts)
    elif model_module is not None:  # a user's model brings its own guide (its latent sites)
        guide_module = check_module(model_module, "guide", f"{m.program} (give a guide with --guide file.py:factory)")
    else:
        _pick(GUIDES, g.name, "guide")
        net = encoder_net(data_dim, image_shape, m.hidden_dim, m.hidden_layers)
        guide_module = AmortizedGuide(Encoder(net, _head(cfg, g.name, net.out_features)))

    if model_module is None:
        likelihood = _pick(LIKELIHOODS, m.likelihood, "likelihood")(data_dim=data_dim, sigma=m.sigma)
        prior = _prior(cfg, getattr(guide_module, "encoder", None), init_data, data_dim)
        decoder = decoder_net(
            m.latent_dim, data_dim, image_shape, m.hidden_dim, m.hidden_layers, likelihood.params_per_pixel
        )
        output = None
        bayesian = _pick(DECODER_PRIORS, m.decoder_prior, "decoder prior")
        if bayesian is not None:  # the output layer's weights become global latents, q(θ) joins the guide
            try:
                decoder, layer = split_output(decoder)
            except ValueError as err:
                raise UserError(f"--decoder-prior {m.decoder_prior}: {err}") from None
            output = bayesian(layer)
            guide_module.global_posterior = MeanFieldNormal(output.initial)
        model_module = VAE(prior, decoder, likelihood, output)
    return ModelAndGuide(model_module, guide_module)


def _head(cfg: Config, name: str, hidden_dim: int) -> nn.Module:
    """The posterior head ``name`` on ``hidden_dim`` features, clipped as the config says."""
    m, g = cfg.model, cfg.guide
    clip = PAPER_LOG_VAR_RANGE if m.clip_logvar else None
    return posterior_head(name, hidden_dim, m.latent_dim, flows=g.flows, rank=g.rank, log_var_range=clip)


def _prior(cfg: Config, encoder: nn.Module | None, init_data: torch.Tensor | None, data_dim: int) -> nn.Module:
    """The prior of the (top) latent layer; a VampPrior mixes ``encoder``."""
    m = cfg.model
    kind = _pick(PSEUDO_INPUTS, m.pseudo_inputs, "pseudo-input parameterisation")
    if kind.from_data:
        pseudo_inputs = lambda: _pseudo_inputs(init_data, m.n_components, data_dim)
    else:
        pseudo_inputs = lambda: torch.randn(m.n_components, data_dim) * m.pseudo_std + m.pseudo_mean
    make = _pick(PRIORS, m.prior, "prior")
    options = {
        "latent_dim": m.latent_dim,
        "encoder": encoder,
        "pseudo_inputs": pseudo_inputs,
        "n_components": m.n_components,
        "flows": m.flows,
        "squash": kind.squash,
    }
    taken = inspect.signature(make).parameters  # each prior's own options (PRIOR_OPTIONS): the rest are not for it
    return make(**{k: v for k, v in options.items() if k in taken})


def _hierarchical_program(
    cfg: Config, data_dim: int, image_shape: tuple[int, ...], init_data: torch.Tensor | None
) -> ModelAndGuide:
    r"""The VampPrior paper's two-layer VAE, from the layers of ``cfg.model.network``.

    With ``n`` = ``hidden_layers`` and ``h`` = ``hidden_dim`` (the paper: gated, n = 2, h = 300):
    :math:`q(z_2|x)` is the network's encoder; :math:`q(z_1|x,z_2)` joins one layer on x and one on
    :math:`z_2`, then ``n - 1`` layers (at least one) from 2h; :math:`p(z_1|z_2)` is n layers from
    :math:`z_2`; :math:`p(x|z_1,z_2)` joins one layer on each, then ``n - 1`` layers and an affine
    output. Both guide heads are of the guide's family; the model's conditional is diagonal Gaussian.
    """
    m, g = cfg.model, cfg.guide
    layer = _pick(LAYERS, m.network, "network for two stochastic layers")
    encoder_net, _ = _pick(NETWORKS, m.network, "network")
    _pick(GUIDES, g.name, "guide")
    L, h, n = m.latent_dim, m.hidden_dim, m.hidden_layers
    joint = lambda: stack(layer, [2 * h] + [h] * max(n - 1, 1))  # (..., 2h) -> (..., h)

    top = Encoder(encoder_net(data_dim, image_shape, h, n), _head(cfg, g.name, h))  # q(z2 | x)
    bottom = ConditionalEncoder(Join(layer(data_dim, h), layer(L, h), joint()), _head(cfg, g.name, h))  # q(z1 | x, z2)
    likelihood = _pick(LIKELIHOODS, m.likelihood, "likelihood")(data_dim=data_dim, sigma=m.sigma)
    output = nn.Sequential(joint(), nn.Linear(h, data_dim * likelihood.params_per_pixel))
    output.out_features = data_dim * likelihood.params_per_pixel
    model = HierarchicalVAE(
        prior=_prior(cfg, top, init_data, data_dim),  # p(z2)
        conditional=Encoder(stack(layer, [L] + [h] * n), _head(cfg, "diagonal", h)),  # p(z1 | z2)
        decoder=Join(layer(L, h), layer(L, h), output),  # (z1, z2) -> f
        likelihood=likelihood,
    )
    return ModelAndGuide(model, HierarchicalGuide(top, bottom))


def _pseudo_inputs(init_data: torch.Tensor | None, n: int, data_dim: int) -> torch.Tensor:
    """``n`` training rows drawn at random (zeros without data): called only by priors that need them."""
    if init_data is None:
        return torch.zeros(n, data_dim)
    idx = torch.randperm(len(init_data))[:n]
    rows = init_data[idx]
    if len(rows) < n:  # fewer data points than pseudo-inputs: repeat them
        rows = rows.repeat((n + len(rows) - 1) // len(rows), 1)[:n]
    return rows.clone()


def check_support(cfg: Config, data) -> None:
    """Refuse data outside the support of the configured likelihood (user programs check their own)."""
    if cfg.model.program:
        return
    likelihood = _pick(LIKELIHOODS, cfg.model.likelihood, "likelihood")(data_dim=data.data_dim, sigma=cfg.model.sigma)
    for name, x in (("the training data", data.train), ("the test data", data.test)):
        try:
            likelihood.check_data(x, name)
        except ValueError as err:
            raise UserError(str(err)) from None
