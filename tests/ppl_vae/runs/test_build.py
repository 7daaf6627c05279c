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
