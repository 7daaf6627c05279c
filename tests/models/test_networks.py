"""Gated dense layers and the two-input join: the equations, the initialisation, the broadcasting."""

import math

import torch

from ppl_vae.models import NETWORKS, GatedDense, Join


def test_gated_dense_is_an_affine_map_gated_by_a_sigmoid():
    """GatedDense(x) = (W_h x + b_h) * sigmoid(W_g x + b_g), W_h and W_g the two halves of one matrix."""
    layer = GatedDense(5, 3).double()
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    W, b = layer.linear.weight, layer.linear.bias
    expected = (x @ W[:3].T + b[:3]) * torch.sigmoid(x @ W[3:].T + b[3:])
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_gated_dense_weights_start_he_normal():
    """W ~ N(0, 2 / fan_in) (the VampPrior code's he_init): the sample moments of 470 400 weights."""
    torch.manual_seed(0)
    w = GatedDense(784, 300).linear.weight.detach().double()
    sd = math.sqrt(2 / 784)
    assert abs(w.mean().item()) < 5 * sd / math.sqrt(w.numel())
    assert abs(w.std().item() / sd - 1) < 5 / math.sqrt(2 * w.numel())  # the SE of a sample sd is sd/sqrt(2n)


def test_join_broadcasts_one_input_over_the_particles_of_the_other():
    """Join(u, v) for u (B, D) and v (K, B, L) equals the join of each particle's own copy of u."""
    join = Join(GatedDense(4, 3), GatedDense(2, 3), GatedDense(6, 5)).double()
    u, v = torch.randn(7, 4, dtype=torch.float64), torch.randn(10, 7, 2, dtype=torch.float64)
    out = join(u, v)
    for k in range(10):
        torch.testing.assert_close(out[k], join.body(torch.cat([join.left(u), join.right(v[k])], -1)))


def test_gated_network_is_the_papers_mlp():
    """Encoder D -> 300 -> 300 and decoder L -> 300 -> 300 -> D of gated layers: the paper's sizes."""
    make_encoder, make_decoder = NETWORKS["gated"]
    encoder, decoder = make_encoder(784, (28, 28), 300, 2), make_decoder(40, 784, (28, 28), 300, 2, 1)
    assert [m.linear.weight.shape for m in encoder] == [(600, 784), (600, 300)]
    assert [m.linear.weight.shape for m in decoder[0]] == [(600, 40), (600, 300)]
    assert decoder[1].weight.shape == (784, 300) and encoder.out_features == 300


def test_he_init_draws_every_linear_weight_with_variance_two_over_fan_in():
    """``--init he``: every nn.Linear (heads and output included) is N(0, 2/fan-in); biases are left alone."""
    from torch import nn

    from ppl_vae.models import INITS

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 784))
    biases = [m.bias.detach().clone() for m in net if isinstance(m, nn.Linear)]
    INITS["he"](net)
    for layer, bias in zip([m for m in net if isinstance(m, nn.Linear)], biases):
        w = layer.weight.detach()
        expected = 2.0 / layer.in_features
        # the sample variance of ~10^5 N(0, s²) draws is within 2% of s² (its relative SE is sqrt(2/n) < 0.5%)
        assert abs(w.var().item() / expected - 1) < 0.02
        assert abs(w.mean().item()) < 4 * (expected / w.numel()) ** 0.5
        torch.testing.assert_close(layer.bias.detach(), bias)
    before = [p.detach().clone() for p in net.parameters()]
    INITS["default"](net)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
