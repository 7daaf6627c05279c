import inspect
import math

import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from ppl_vae.guides import GUIDES, AmortizedGuide, Encoder, posterior_head
from ppl_vae.models import MLP


@pytest.mark.parametrize("name", list(GUIDES))
def test_guide_has_the_model_plate_and_site(name):
    guide = AmortizedGuide(Encoder(MLP([6, 16], activate_last=True), posterior_head(name, 16, 3)))
    trace = poutine.trace(guide.guide).get_trace(torch.rand(5, 6))
    latent = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["name"] == "data"]
    assert [s["name"] for s in latent] == ["z"]
    z = latent[0]
    assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    assert z["value"].shape == (5, 3) and z["fn"].event_shape == (3,)


def test_diagonal_density_is_the_normal_formula():
    head = posterior_head("diagonal", 4, 2).double()
    h = torch.randn(3, 4, dtype=torch.float64)
    q = head(h)
    loc, raw = head.linear(h).chunk(2, -1)
    scale = torch.nn.functional.softplus(raw) + 1e-4
    z = torch.randn(3, 2, dtype=torch.float64)
    expected = (
        -0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    ).sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected)


def test_lowrank_draws_have_the_head_covariance():
    """Draws of q(z|x) have covariance W(h)W(h)ᵀ + diag d(h), built from the head's own outputs."""
    head = posterior_head("lowrank", 4, 3, rank=2).double()
    h = torch.randn(1, 4, dtype=torch.float64)
    q = head(h)
    assert isinstance(q, dist.LowRankMultivariateNormal)
    out = head.linear(h)[0]
    W = out[6:].reshape(3, 2) / 2**0.5
    cov = W @ W.T + torch.diag(torch.nn.functional.softplus(out[3:6]) + 1e-4)
    torch.manual_seed(0)
    z = q.sample((200000,))[:, 0]  # (n, 3)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.02 * cov.abs().max().item(), rtol=0.02)
    torch.testing.assert_close(z.mean(0), out[:3], atol=0.01 * cov.diag().max().sqrt().item() * 5, rtol=0)


def test_clipped_head_keeps_the_log_variance_in_the_papers_range():
    """s = exp(v / 2) with v = hardtanh(a, -6, 2): exact inside the range, e^-3 and e^1 at its ends."""
    from ppl_vae.guides import PAPER_LOG_VAR_RANGE, DiagonalNormal

    head = DiagonalNormal(1, 3, log_var_range=PAPER_LOG_VAR_RANGE).double()
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -50.0, 1.5, 50.0], dtype=torch.float64))
    scale = head(torch.zeros(2, 1, dtype=torch.float64)).base_dist.scale
    expected = torch.tensor([math.exp(-3.0), math.exp(0.75), math.exp(1.0)], dtype=torch.float64)
    torch.testing.assert_close(scale, expected.expand(2, 3), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", list(GUIDES))
def test_each_head_constructor_names_only_options_posterior_head_has(name):
    """posterior_head passes each constructor the options its signature names: no other name could be given."""
    options = set(inspect.signature(posterior_head).parameters) - {"name"}
    assert set(inspect.signature(GUIDES[name]).parameters) <= options


def test_a_misspelt_head_option_is_an_error_not_silently_dropped():
    assert posterior_head("lowrank", 4, 3, rank=1).rank == 1
    with pytest.raises(TypeError, match="rnak"):
        GUIDES["lowrank"](4, 3, rnak=1)
    with pytest.raises(TypeError, match="flow"):
        GUIDES["iaf"](4, 3, flow=1)
    with pytest.raises(TypeError, match="rnak"):
        posterior_head("lowrank", 4, 3, rnak=1)
