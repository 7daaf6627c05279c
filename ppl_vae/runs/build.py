"""Build the model/guide pair a config names: registries for the parts, or the user's own program.

The bench only ever sees a :class:`Program`: a module holding a model module and a guide
module, with ``model(x)`` and ``guide(x)``. Everything it does with them goes through
Pyro's effect handlers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import Config, is_program_spec
from ..errors import UserError
from ..guides import GUIDES, AmortizedGuide, Encoder, posterior_head
from ..inference.trial import check_module
from ..models import LIKELIHOODS, NETWORKS, PRIORS, VAE
from .programs import ProgramFile, import_factory, named_file

__all__ = ["Program", "build_program", "check_support", "load_factory"]


class Program(nn.Module):
    """The pair the bench trains and saves: ``model_module.model`` and ``guide_module.guide``."""

    def __init__(self, model_module: nn.Module, guide_module: nn.Module):
        super().__init__()
        self.model_module = model_module
        self.guide_module = guide_module

    def model(self, x: torch.Tensor) -> None:
        return self.model_module.model(x)

    def guide(self, x: torch.Tensor) -> None:
        return self.guide_module.guide(x)


def _pick(registry: dict, name: str, what: str):
    if name not in registry:
        raise UserError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def load_factory(spec: str, role: str, programs: dict[str, ProgramFile] | None = None) -> Callable:
    """The factory of ``path/to/file.py:factory`` (the user's own program).

    ``programs`` holds code already read (the run's stored copy, or the file read once at
    ``fit``); without it the file ``spec`` names is read now.
    """
    path, sep, attr = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not attr:
        raise UserError(f"--{role} program must look like path/to/file.py:factory, got {spec!r}")
    program = (programs or {}).get(role)
    if program is None or program.spec != spec:
        program = named_file(role, spec)
    return import_factory(program)


def _user_module(
    spec: str, role: str, data_dim: int, latent_dim: int, programs: dict[str, ProgramFile] | None
) -> nn.Module:
    return check_module(load_factory(spec, role, programs)(data_dim, latent_dim), role, spec)


def build_program(
    cfg: Config,
    data_dim: int,
    image_shape: tuple[int, ...],
    init_data: torch.Tensor | None = None,
    programs: dict[str, ProgramFile] | None = None,
) -> Program:
    """Build the :class:`Program` described by ``cfg`` for data of ``data_dim`` values.

    Args:
        init_data: training rows used to initialise data-dependent parameters (the VampPrior's
            pseudo-inputs); ``None`` when the weights will be loaded from a checkpoint anyway.
        programs: the code of the user programs ``cfg`` names, already read (see
            :mod:`ppl_vae.runs.programs`); without it the named files are read.
    """
    m, g = cfg.model, cfg.guide
    model_module = _user_module(m.program, "model", data_dim, m.latent_dim, programs) if m.program else None
    encoder_net, decoder_net = _pick(NETWORKS, m.network, "network")
    if is_program_spec(g.name):
        guide_module = _user_module(g.name, "guide", data_dim, m.latent_dim, programs)
    elif model_module is not None:  # a user's model brings its own guide (its latent sites)
        guide_module = check_module(model_module, "guide", f"{m.program} (give a guide with --guide file.py:factory)")
    else:
        _pick(GUIDES, g.name, "guide")
        net = encoder_net(data_dim, image_shape, m.hidden_dim, m.hidden_layers)
        head = posterior_head(g.name, net.out_features, m.latent_dim, flows=g.flows, rank=g.rank)
        guide_module = AmortizedGuide(Encoder(net, head))

    if model_module is None:
        make_likelihood = _pick(LIKELIHOODS, m.likelihood, "likelihood")
        make_prior = _pick(PRIORS, m.prior, "prior")
        encoder = getattr(guide_module, "encoder", None)
        likelihood = make_likelihood(data_dim=data_dim, sigma=m.sigma)
        prior = make_prior(
            latent_dim=m.latent_dim,
            encoder=encoder,
            pseudo_inputs=lambda: _pseudo_inputs(init_data, m.n_components, data_dim),
            n_components=m.n_components,
            flows=m.flows,
        )
        decoder = decoder_net(
            m.latent_dim, data_dim, image_shape, m.hidden_dim, m.hidden_layers, likelihood.params_per_pixel
        )
        model_module = VAE(prior, decoder, likelihood)
    return Program(model_module, guide_module)


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
