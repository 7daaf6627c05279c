"""Conditional flow transforms used by the guides, checked in float64 (cf. zuko's tests)."""

import pytest
import torch

from ppl_vae.guides import FLOWS

L, H = 3, 5
# planar, radial and neural-autoregressive flows are invertible but have no closed-form inverse
# (Rezende & Mohamed 2015; Huang et al. 2018); Pyro raises for them, and so do we
CLOSED_FORM_INVERSE = {"iaf", "spline", "householder"}


def _transform(name, seed=0):
    torch.manual_seed(seed)
    t = FLOWS[name](L, H).double()
    for p in t.parameters():  # move off the identity-ish initialisation so the test has teeth
        p.data.add_(0.3 * torch.randn_like(p))
    return t


@pytest.mark.parametrize("name", sorted(CLOSED_FORM_INVERSE))
def test_inverse_round_trip(name):
    t = _transform(name).condition(torch.randn(H, dtype=torch.float64))
    x = torch.randn(7, L, dtype=torch.float64)
    y = t(x)
    x_back = t._inverse(y)  # bypasses the (x, y) cache: a real inversion
    torch.testing.assert_close(x_back, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(FLOWS) - CLOSED_FORM_INVERSE))
def test_without_closed_form_inverse_only_own_samples_invert(name):
    """The guide only ever needs log q of its own draws: the cached pair inverts exactly, others refuse."""
    t = _transform(name).condition(torch.randn(H, dtype=torch.float64))
    x = torch.randn(7, L, dtype=torch.float64)
    y = t(x)
    assert torch.equal(t.inv(y), x)
    with pytest.raises((NotImplementedError, KeyError)):
        t._inverse(y + 1.0)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_log_abs_det_jacobian_matches_autograd(name):
    t = _transform(name).condition(torch.randn(H, dtype=torch.float64))
    for _ in range(3):
        x = torch.randn(L, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda v: t(v.unsqueeze(0)).squeeze(0), x)  # (L, L)
        _, logabsdet = torch.linalg.slogdet(jacobian)
        y = t(x.unsqueeze(0))
        ldj = t.log_abs_det_jacobian(x.unsqueeze(0), y)
        ldj = ldj.sum(-1) if ldj.shape[-1:] == (L,) else ldj
        torch.testing.assert_close(ldj.squeeze(), logabsdet, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_gradient_reaches_every_parameter(name):
    module = _transform(name)
    h = torch.randn(4, H, dtype=torch.float64)
    t = module.condition(h)
    x = torch.randn(4, L, dtype=torch.float64)
    y = t(x)
    ldj = t.log_abs_det_jacobian(x, y)
    (y.pow(2).sum() + ldj.sum()).backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
