"""The built-in programs are Pyro programs: pyro.infer.SVI, any ELBO, any pyro.optim optimizer, as written."""

import pyro
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from ppl_vae.config import Config
from ppl_vae.inference.trainer import elbo_per_datapoint
from ppl_vae.runs.build import build_program


def _program(digits, model: dict, guide: dict):
    config = Config()
    for section, values in (("model", model), ("guide", guide)):
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return build_program(config.validate(), digits.data_dim, digits.image_shape, init_data=digits.train)


@pytest.mark.parametrize(
    "model,guide",
    [
        pytest.param({}, {}, id="canonical"),
        pytest.param({}, {"name": "iaf"}, id="iaf-guide"),
        pytest.param({"prior": "flow"}, {}, id="flow-prior"),
        pytest.param({"prior": "vamp"}, {}, id="vamp-prior"),
        pytest.param({"prior": "mog"}, {}, id="mog-prior"),
        pytest.param({"likelihood": "normal-learned"}, {}, id="learned-sigma"),
    ],
)
def test_the_issue_snippet_changes_every_parameter_tensor(digits, model, guide):
    """``SVI(prog.model, prog.guide, Adam, Trace_ELBO)``, 20 steps: every tensor moves, each found once."""
    prog = _program(digits, model, guide)
    before = {name: p.detach().clone() for name, p in prog.named_parameters()}
    buffers = {name: b.clone() for name, b in prog.named_buffers()}
    svi = SVI(prog.model, prog.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    x = digits.train[:128]
    for _ in range(20):
        svi.step(x)
    assert [name for name, p in prog.named_parameters() if torch.equal(p, before[name])] == []
    # the store holds the program's own tensors (no copies), each stepped by one optimizer
    store = dict(pyro.get_param_store().named_parameters())
    assert {id(t) for t in store.values()} == {id(p) for p in prog.parameters()}
    assert len(svi.optim.optim_objs) == len(before)
    # buffers (flow permutations and masks, σ) are the module's, untouched by training
    assert all(torch.equal(b, buffers[name]) for name, b in prog.named_buffers())


@pytest.mark.parametrize(
    "elbo,optim",
    [  # constructors: every test gets fresh optimizer state
        (Trace_ELBO, lambda: pyro.optim.Adam({"lr": 3e-3})),
        (TraceMeanField_ELBO, lambda: pyro.optim.ClippedAdam({"lr": 3e-3})),
        (TraceGraph_ELBO, lambda: pyro.optim.RMSprop({"lr": 1e-3})),
        (lambda: RenyiELBO(alpha=0.0, num_particles=2), lambda: pyro.optim.Adam({"lr": 3e-3})),
    ],
    ids=["trace-adam", "meanfield-clippedadam", "tracegraph-rmsprop", "renyi-adam"],
)
def test_any_pyro_elbo_and_optimizer_improves_the_elbo(digits, elbo, optim):
    """30 SVI steps raise the held-out per-datapoint ELBO by more than 5 standard errors of the change."""
    prog = _program(digits, {}, {})
    x, x_test = digits.train[:256], digits.test[:200]
    pyro.set_rng_seed(1)
    before = elbo_per_datapoint(prog, x_test, num_particles=8)
    svi = SVI(prog.model, prog.guide, optim(), elbo())
    for step in range(30):
        svi.step(x[(step % 2) * 128 :][:128])
    after = elbo_per_datapoint(prog, x_test, num_particles=8)
    gain = after - before  # (N,), paired by test point
    assert gain.mean() > 5 * gain.std() / len(gain) ** 0.5, (gain.mean(), gain.std())


def _every_configuration():
    """One configuration per value of each built-in axis (the rest at defaults), with one and two stochastic layers."""
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import LAYERS, LIKELIHOODS, NETWORKS, PRIORS

    axes = [("prior", PRIORS), ("likelihood", LIKELIHOODS), ("network", NETWORKS)]
    cases = [pytest.param({key: name}, {}, id=f"{key}-{name}") for key, names in axes for name in names]
    cases += [pytest.param({}, {"name": name}, id=f"guide-{name}") for name in GUIDES]
    cases += [pytest.param({"decoder_prior": "normal"}, {}, id="decoder-prior-normal")]  # global latents
    cases += [
        pytest.param({"stochastic_layers": 2, "network": net, "prior": prior}, {}, id=f"two-layers-{net}-{prior}")
        for net in LAYERS
        for prior in PRIORS
    ]
    cases += [pytest.param({"stochastic_layers": 2}, {"name": "iaf"}, id="two-layers-iaf-guide")]
    return cases


@pytest.mark.parametrize("model,guide", _every_configuration())
def test_every_built_in_configuration_trains_under_plain_svi(digits, model, guide):
    """``pyro.infer.SVI`` as written, 3 steps: every parameter tensor of every built-in configuration moves."""
    prog = _program(digits, {"hidden_dim": 16, "latent_dim": 2, **model}, guide)
    before = {name: p.detach().clone() for name, p in prog.named_parameters()}
    svi = SVI(prog.model, prog.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for step in range(3):
        svi.step(digits.train[step * 32 : (step + 1) * 32])
    unchanged = [name for name, p in prog.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == [], unchanged
    assert len(svi.optim.optim_objs) == len(before)  # each tensor found once
