"""The two-layer hierarchical VAE: its log-weights by hand, its guide's order, and that it trains."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal

from ppl_vae.config import Config
from ppl_vae.errors import UserError
from ppl_vae.inference.importance import log_weights
from ppl_vae.runs.build import build_program
from ppl_vae.runs.fit import fit
from tests.conftest import tiny_config


def _normal(head, h, log_var_range):
    """The diagonal Gaussian a head gives for features h, written out: loc and scale from its linear map."""
    loc, raw = head.linear(h).chunk(2, -1)
    scale = F.softplus(raw) + 1e-4 if log_var_range is None else (0.5 * raw.clamp(*log_var_range)).exp()
    return Normal(loc, scale)


@pytest.mark.parametrize("prior", ["standard", "vamp"])
@pytest.mark.parametrize("clip", [False, True])
def test_log_weights_are_the_hand_computed_factorisation(prior, clip):
    """log w = log p(x|z1,z2) + log p(z1|z2) + log p(z2) - log q(z2|x) - log q(z1|x,z2), from the networks by hand."""
    config = tiny_config(
        model={
            "stochastic_layers": 2,
            "network": "gated",
            "hidden_dim": 6,
            "hidden_layers": 2,
            "latent_dim": 3,
            "likelihood": "bernoulli",
            "prior": prior,
            "n_components": 4,
            "pseudo_inputs": "hardtanh",
            "pseudo_mean": 0.5,
            "pseudo_std": 0.3,
            "clip_logvar": clip,
        }
    )
    program = build_program(config, 5, (5,)).double()
    model, guide = program.model_module, program.guide_module
    x = torch.bernoulli(torch.full((4, 5), 0.4, dtype=torch.float64))
    lw, guide_trace, _, _ = log_weights(program.model, program.guide, x, num_particles=3, return_traces=True)
    z2, z1 = guide_trace.nodes["z2"]["value"], guide_trace.nodes["z1"]["value"]  # (3, 4, 3) each
    r = (-6.0, 2.0) if clip else None

    g1 = guide.conditional.net  # q(z1 | x, z2): a layer on x and one on z2, concatenated, then the body
    h_q1 = g1.body(torch.cat([g1.left(x).expand(3, 4, 6), g1.right(z2)], -1))
    log_q = _normal(guide.encoder.head, guide.encoder.net(x), r).log_prob(z2).sum(-1)
    log_q = log_q + _normal(guide.conditional.head, h_q1, r).log_prob(z1).sum(-1)

    d = model.decoder  # p(x | z1, z2): a layer on each, concatenated, then the body
    logits = d.body(torch.cat([d.left(z1), d.right(z2)], -1))
    log_lik = Bernoulli(logits=logits).log_prob(x).sum(-1)
    log_p1 = _normal(model.conditional.head, model.conditional.net(z2), r).log_prob(z1).sum(-1)
    if prior == "standard":
        log_p2 = Normal(0.0, 1.0).log_prob(z2).sum(-1)
    else:  # the mixture of q(z2 | u_c) over the pseudo-inputs u_c = hardtanh(w_c)
        u = model.prior.pseudo_inputs.clamp(0.0, 1.0)
        components = _normal(guide.encoder.head, guide.encoder.net(u), r)  # batch (4 components, 3)
        log_p2 = torch.logsumexp(components.log_prob(z2[..., None, :]).sum(-1), -1) - math.log(4)
    torch.testing.assert_close(lw.log_lik, log_lik, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lw.total, log_lik + log_p1 + log_p2 - log_q, rtol=1e-10, atol=1e-10)


def test_the_vamp_prior_of_two_layers_mixes_the_top_encoder():
    """The VampPrior on z2 shares q(z2|x)'s encoder, so its parameters are trained once, by both programs."""
    config = tiny_config(model={"stochastic_layers": 2, "network": "gated", "prior": "vamp", "n_components": 3})
    program = build_program(config, 64, (8, 8))
    assert program.model_module.prior.encoder is program.guide_module.encoder


def test_two_layers_train_on_digits(digits, tmp_path):
    """A few epochs of the two-layer VAE raise its held-out ELBO (the programs fit together under SVI)."""
    config = tiny_config(
        model={"stochastic_layers": 2, "network": "gated", "hidden_layers": 2, "latent_dim": 4, "prior": "vamp"},
        train={"epochs": 4, "lr": 3e-3},
    )
    run = fit(config, tmp_path / "run", progress=False, data=digits)
    elbos = [row["test_elbo"] for row in run.history]
    assert elbos[-1] > elbos[0] + 5, elbos


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"network": "conv"}, "dense layers"),
        ({"network": "linear"}, "dense layers"),
        ({"program": "examples/x.py:make"}, "builds its own programs"),
    ],
)
def test_two_layers_refuse_what_they_cannot_build(changes, message):
    config = Config()
    config.model.stochastic_layers = 2
    for key, value in changes.items():
        setattr(config.model, key, value)
    with pytest.raises(UserError, match=message):
        config.validate()


def test_the_papers_two_layer_vae_runs_the_whole_workflow_from_the_command_line(tmp_path):
    """fit with every paper option, early stopping on a validation split, then evaluate (k̂, gaps, SBC).

    These sizes give a weights file whose safetensors header length starts with byte 0x80, a
    pickle's first opcode: the checkpoint check reads the layout before looking for pickle magic.
    """
    import json

    from ppl_vae.cli import main

    out = tmp_path / "run"
    paper = ["--stochastic-layers", "2", "--network", "gated", "--prior", "vamp", "--pseudo-inputs", "hardtanh"]
    sizes = ["--clip-logvar", "--components", "20", "--hidden-dim", "32", "--latent-dim", "4"]
    data = ["--likelihood", "bernoulli", "--binarize", "--validation", "200", "--patience", "3", "--epochs", "3"]
    assert main(["fit", "--out", str(out), *paper, *sizes, *data, "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] in (1, 2, 3)
    evaluate = ["--k", "20", "--points", "30", "--gap-points", "5", "--gap-steps", "5", "--sbc-simulations", "20"]
    assert main(["evaluate", str(out), *evaluate]) == 0
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert evaluation["active_units"] <= 8 and len(evaluation["latent_variance"]) == 8  # z1 and z2, 4 each
