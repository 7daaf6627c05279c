r"""The optimizers a run can take: Adam, and Adam on per-tensor normalised gradients.

``AdamNormGrad`` is the optimizer of the VampPrior paper's code: before Adam's update each
parameter tensor's gradient is divided by its own L2 norm,

.. math::

    g \leftarrow \frac{g}{\lVert g \rVert_2 + 10^{-7}},

so every tensor moves at a pace set by Adam's moments of a unit-norm gradient, whatever its
size (a 500 × 784 block of pseudo-inputs as much as a bias). Adam's own moments, bias
corrections and ε follow unchanged; the state is Adam's, so checkpoints hold the same tensors.

References:
    Kingma & Ba 2015, "Adam: a method for stochastic optimization", arXiv:1412.6980.
    Tomczak & Welling 2018, "VAE with a VampPrior", arXiv:1705.07120 (the authors' code).

Example:
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> w.grad = torch.tensor([30.0, 40.0])
    >>> opt = OPTIMIZERS["adamnormgrad"]([w], lr=0.1)
    >>> opt.step()
    >>> w.detach()  # Adam's first step moves each coordinate by lr, whatever the scale
    tensor([2.9000, 3.9000])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["AdamNormGrad", "OPTIMIZERS", "NORM_EPS"]

NORM_EPS = 1e-7  # added to a gradient's norm, as in the authors' code: a zero gradient stays zero


class AdamNormGrad(torch.optim.Adam):
    """Adam on gradients divided, tensor by tensor, by their L2 norm (see the module docstring)."""

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads)
            torch._foreach_add_(norms, NORM_EPS)
            torch._foreach_div_(grads, norms)
        return super().step(closure)


def _fused(params: Iterable[torch.Tensor]) -> bool:
    params = list(params)
    return bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # one fused kernel for all parameters instead of a dozen small ops per tensor
    "adam": lambda params, lr: torch.optim.Adam(params := list(params), lr=lr, fused=_fused(params)),
    "adamnormgrad": lambda params, lr: AdamNormGrad(params := list(params), lr=lr, fused=_fused(params)),
}
"""Name on the command line -> ``(parameters, lr) -> optimizer``."""
