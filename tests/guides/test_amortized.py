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
    expected = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))).sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected)


def test_lowrank_covariance():
    head = posterior_head("lowrank", 4, 3, rank=2).double()
    q = head(torch.randn(1, 4, dtype=torch.float64))
    assert isinstance(q, dist.LowRankMultivariateNormal)
    cov = q.cov_factor @ q.cov_factor.transpose(-1, -2) + torch.diag_embed(q.cov_diag)
    torch.testing.assert_close(q.covariance_matrix, cov)
