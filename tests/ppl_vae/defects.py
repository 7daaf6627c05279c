"""Programs from the defect list of the programs issue, as factories for ``--model tests/ppl_vae/defects.py:NAME``."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from examples.ss_vae_m2 import M2


class Small(nn.Module):
    def __init__(self, data_dim, latent_dim, hidden=16):
        super().__init__()
        self.L = latent_dim
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))
        self.enc = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))

    def q(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)


class Extras(Small):
    """pyro.deterministic, two observed sites (x split in halves), and obs_mask on the second (rows 0 mod 3 missing)."""

    def model(self, x):
        half = x.shape[1] // 2
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            mean = self.dec(z)
            pyro.deterministic("x_mean", mean, event_dim=1)
            pyro.sample("x", dist.Normal(mean[..., :half], 0.1).to_event(1), obs=x[:, :half])
            seen = torch.arange(x.shape[0], device=x.device) % 3 != 0
            pyro.sample("rest", dist.Normal(mean[..., half:], 0.1).to_event(1), obs=x[:, half:], obs_mask=seen)

    def guide(self, x):
        half = x.shape[1] // 2
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))
            pyro.sample("rest_unobserved", dist.Normal(x.new_zeros(x.shape[1] - half), 1.0).to_event(1))


class NoBroadcast(Small):
    """Folds the particle dim into the batch: works for one draw, not for K in one pass."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z.reshape(x.shape[0], -1)), 0.1).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))


class PyroModuleIdiom(Small):
    """Pyro's own idiom: networks registered with pyro.module inside the programs."""

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.1).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))


class SampledM2(M2):
    """M2 with y always latent and nothing to enumerate it: score-function noise on every step."""

    def model(self, x, y=None):
        super().model(x, None)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=self.classifier(x)))
            loc, raw = self.encoder(torch.cat([x.expand(y.shape[:-1] + x.shape[-1:]), y], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1))


def extras(data_dim, latent_dim):
    return Extras(data_dim, latent_dim)


def no_broadcast(data_dim, latent_dim):
    return NoBroadcast(data_dim, latent_dim)


def pyro_module_idiom(data_dim, latent_dim):
    return PyroModuleIdiom(data_dim, latent_dim)


def sampled_m2(data_dim, latent_dim, num_classes=None):
    return SampledM2(data_dim, latent_dim, num_classes or 10, hidden=16)
