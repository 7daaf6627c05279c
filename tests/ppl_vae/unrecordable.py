"""Programs a recording cannot reproduce: one branches on a tensor value, one reads values back as numbers."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Branching(nn.Module):
    """A guide that reads a tensor back to Python to branch on it: recording refuses it."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True).expand(z.shape[:-1] + x.shape[-1:])
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x):
        scale = 2.0 if x.sum() > 0 else 1.0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), scale).to_event(1))


class ReadsBack(nn.Module):
    """A model that shifts its decoding by ten times the batch's mean, read back with ``.tolist()``.

    Recording succeeds — the mean of the batch it was recorded on becomes a constant — so only a
    second batch shows that the recording is not the program.
    """

    def __init__(self, dim: int = 3):
        super().__init__()
        self.dec = nn.Linear(2, dim)
        self.enc = nn.Linear(dim, 2)

    def model(self, x):
        shift = 10 * sum(x.mean(-1).tolist()) / x.shape[0]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z) + shift, 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.enc(x), 1.0).to_event(1))
