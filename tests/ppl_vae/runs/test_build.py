"""Building a program from a config: the same seed gives the same initial state, whatever else is passed."""

import pyro
import pytest
import torch

from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


@pytest.mark.parametrize("prior", ["standard", "mog", "flow"])
def test_priors_without_pseudo_inputs_draw_nothing_for_them(prior, digits):
    """Only the VampPrior draws rows for its pseudo-inputs; other priors start the same with or without data."""
    config = tiny_config(model={"prior": prior})
    pyro.set_rng_seed(3)
    with_data = build_program(config, 64, (8, 8), init_data=digits.train).state_dict()
    pyro.set_rng_seed(3)
    without = build_program(config, 64, (8, 8)).state_dict()
    assert with_data.keys() == without.keys()
    for key in with_data:
        assert torch.equal(with_data[key], without[key]), key


def test_vamp_pseudo_inputs_are_training_rows(digits):
    config = tiny_config(model={"prior": "vamp", "n_components": 5})
    program = build_program(config, 64, (8, 8), init_data=digits.train)
    u = program.model_module.prior.pseudo_inputs.detach()
    rows = {tuple(r.tolist()) for r in digits.train}
    assert all(tuple(r.tolist()) in rows for r in u)


@pytest.mark.parametrize(
    "init,variance", [("he", lambda fan_in: 2.0 / fan_in), ("default", lambda fan_in: 1.0 / (3 * fan_in))]
)
def test_init_reaches_the_heads_and_the_output_layer(init, variance):
    """``--init he`` redraws the layers PyTorch would start uniform (var 1/(3 fan-in)): heads and the output."""
    torch.manual_seed(0)
    config = tiny_config(model={"init": init, "hidden_dim": 256, "latent_dim": 64, "network": "gated"})
    program = build_program(config, 784, (28, 28))
    linears = [m for m in program.modules() if isinstance(m, torch.nn.Linear)]
    output = [m for m in linears if m.out_features == 784][0]  # the decoder's output layer
    for layer in [output]:
        w = layer.weight.detach()
        assert abs(w.var().item() / variance(layer.in_features) - 1) < 0.05
