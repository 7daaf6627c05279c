"""The optimizers: AdamNormGrad's step against one computed by hand, and Adam's state kept."""

import math

import pytest
import torch

from ppl_vae.inference.optimizers import NORM_EPS, OPTIMIZERS, AdamNormGrad


def _hand_adam_norm_grad(w, grads, lr, betas=(0.9, 0.999), eps=1e-8):
    """Adam (Kingma & Ba, Algorithm 1) on g / (‖g‖ + 1e-7), written out in float64 scalars per coordinate."""
    w, m, v = list(w), [0.0] * len(w), [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        norm = math.sqrt(sum(gi * gi for gi in g)) + NORM_EPS
        g = [gi / norm for gi in g]
        for i, gi in enumerate(g):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * gi
            v[i] = betas[1] * v[i] + (1 - betas[1]) * gi * gi
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            w[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return w


@pytest.mark.parametrize("fused", [False, True])
def test_adam_norm_grad_equals_the_hand_computed_steps(fused):
    grads = [[3.0, -4.0, 0.0], [0.5, 0.25, -2.0], [100.0, 1e-3, 7.0]]  # norms 5, ~2.08, ~100.2: scales far apart
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = AdamNormGrad([w], lr=0.01, fused=fused)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _hand_adam_norm_grad([1.0, -2.0, 0.5], grads, lr=0.01)
    torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_adam_norm_grad_differs_from_adam_where_gradient_norms_change():
    """Adam alone is invariant to one constant scale of the gradients, not to a scale that changes per step."""
    grads = [torch.tensor([3.0, -4.0]), torch.tensor([0.3, 0.1])]
    ends = {}
    for name in OPTIMIZERS:
        w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = OPTIMIZERS[name]([w], 0.1)
        for g in grads:
            w.grad = g.to(torch.float64).clone()
            opt.step()
        ends[name] = w.detach()
    assert not torch.allclose(ends["adam"], ends["adamnormgrad"])


def test_each_tensor_is_normalised_by_its_own_norm():
    """Two tensors with gradients 1000 apart move alike on the first step (each a unit-norm gradient)."""
    a = torch.nn.Parameter(torch.zeros(4))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((4,), 1000.0), torch.full((4,), 1.0)
    opt = OPTIMIZERS["adamnormgrad"]([a, b], 0.1)
    opt.step()
    torch.testing.assert_close(a.detach(), b.detach())
    assert isinstance(opt, torch.optim.Adam)  # Adam's state: checkpoints hold the same tensors
    assert set(opt.state[a]) == {"step", "exp_avg", "exp_avg_sq"}
