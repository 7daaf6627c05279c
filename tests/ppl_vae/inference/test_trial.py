"""The trial run: a program outside the contract is refused in one line naming the site and the reason."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae.errors import UserError
from ppl_vae.inference.objectives import Objective
from ppl_vae.inference.trial import check_program
from tests.ppl_vae.mixtures import MixtureVAE

X = torch.rand(4, 6)


class Base(nn.Module):
    """A tiny canonical pair; subclasses break one rule each."""

    def __init__(self, L=2, D=6):
        super().__init__()
        self.dec = nn.Linear(L, D)
        self.enc = nn.Linear(D, 2 * L)
        self.L = L

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))


class NoParticleBroadcast(Base):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            h = self.dec(z.reshape(x.shape[0], self.L))  # folds the particle dim away
            pyro.sample("x", dist.Normal(h, 0.5).to_event(1), obs=x)


class OtherNames(Base):
    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("code", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))


class OutsidePlate(Base):
    """A global latent: σ of the likelihood with a LogNormal prior, outside the plate."""

    def model(self, x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))  # () or (K, 1) with particles in front
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), scale[..., None]).to_event(1), obs=x)

    def guide(self, x):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        super().guide(x)


class LocalOutsidePlate(Base):
    """A global σ and z written outside the plate: z's shape follows the batch, so z is no global latent."""

    def model(self, x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.L), 1.0).to_event(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.dec(z), scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        loc, raw = self.enc(x).chunk(2, -1)
        pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(2))


class GlobalWithFixedPlate(OutsidePlate):
    """A global σ, and the local sites in a plate of a fixed size."""

    def model(self, x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", 4, subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", 4, subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))


class GlobalObserved(Base):
    def model(self, x):
        pyro.sample("mean", dist.Normal(0.0, 1.0), obs=x.mean())
        super().model(x)


class LocalInModelGlobalInGuide(OutsidePlate):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), scale[..., None]).to_event(1), obs=x)


class FixedPlateSize(Base):
    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", 4, subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))

    def model(self, x):
        with pyro.plate("data", 4, subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)


class FreeParam(Base):
    def model(self, x):
        shift = pyro.param("shift", torch.zeros(6))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z) + shift, 0.5).to_event(1), obs=x)


class RegisteredModule(Base):
    """Pyro's idiom: the decoder registered with pyro.module (its parameters are the module's)."""

    def model(self, x):
        pyro.module("decoder", self.dec)
        super().model(x)


class NestedEnumeration(Base):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("pixels", x.shape[1]):
                c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
                pyro.sample("x", dist.Normal(c, 0.5), obs=x)

    def guide(self, x):
        pass


class Raises(Base):
    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            raise RuntimeError("boom\nsecond line")


class Discrete(Base):
    """y ~ Cat in model and guide; ``how`` marks the guide's site (None: not enumerated)."""

    def __init__(self, how=None):
        super().__init__()
        self.how = how
        self.cls = nn.Linear(6, 3)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(3)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z) + y.unsqueeze(-1), 0.5).to_event(1), obs=x)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))
            pyro.sample("y", dist.Categorical(logits=self.cls(x)), infer={"enumerate": self.how} if self.how else {})


class Extras(Base):
    """pyro.deterministic, a second observed site, an obs_mask site (its unobserved part sampled by the guide)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            h = self.dec(z)
            pyro.deterministic("decoded", h, event_dim=1)
            pyro.sample("left", dist.Normal(h[..., :3], 0.5).to_event(1), obs=x[:, :3])
            mask = torch.tensor([True, False, True, True]).to(x.device)[: x.shape[0]]
            pyro.sample("right", dist.Normal(h[..., 3:], 0.5).to_event(1), obs=x[:, 3:], obs_mask=mask)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))
            pyro.sample("right_unobserved", dist.Normal(x.new_zeros(3), 1.0).to_event(1))


def trial(program, elbo="trace", particles=1, x=X):
    return check_program(program, Objective(elbo, particles), [("", x, {})], "prog.py:make")


@pytest.mark.parametrize(
    "program,elbo,message",
    [
        (
            NoParticleBroadcast(),
            "trace",
            "site 'z' has shape (2, 2, 2) with the K = 2 particles in front, where the program expects (2, 2)",
        ),
        (
            OtherNames(),
            "trace",
            "the model's latent site(s) 'z' are not sampled by the guide; the guide samples 'code'",
        ),
        (
            LocalOutsidePlate(),
            "trace",
            "guide site 'z' is outside the plate over the batch, yet its shape (2, 2) follows the batch's size",
        ),
        (GlobalWithFixedPlate(), "trace", "plate 'data' has size 4 on a batch of 2"),
        (GlobalObserved(), "trace", "observed model site 'mean' is outside every plate"),
        (LocalInModelGlobalInGuide(), "trace", "site 'scale' is inside the plate 'data' in the model and outside"),
        (FixedPlateSize(), "trace", "plate 'data' has size 4 on a batch of 2"),
        (FreeParam(), "trace", "pyro.param site 'shift' is not a parameter of the program's modules"),
        (NestedEnumeration(), "traceenum", "enumerated model site 'c' sits in plate(s) pixels"),
        (Raises(), "trace", "the guide on a trial batch fails after site 'z': RuntimeError: boom second line"),
        (Discrete(), "trace", "guide site 'y' is discrete and not enumerated"),
        (Discrete(), "traceenum", "guide site 'y' is discrete and not enumerated"),
        (
            Discrete(),
            "iwae",
            "guide site 'y' is discrete and not enumerated: the iwae ELBO would train it on no gradient",
        ),
        (Discrete("parallel"), "trace", "guide site 'y' is marked for enumeration, which the trace ELBO ignores"),
        (Discrete("parallel"), "meanfield", "guide site 'y' is marked for enumeration, which the meanfield ELBO"),
        (Discrete("parallel"), "iwae", "q(y|x) cancels and gets no gradient; use --elbo traceenum"),
        (Discrete("sequential"), "traceenum", "only exact parallel enumeration is supported"),
    ],
)
def test_a_program_outside_the_contract_is_refused_in_one_line(program, elbo, message):
    with pytest.raises(UserError) as err:
        trial(program, elbo)
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("prog.py:make: "), text


@pytest.mark.parametrize(
    "program,elbo",
    [(Base(), "iwae"), (RegisteredModule(), "trace"), (Extras(), "trace"), (OutsidePlate(), "trace")],
)
def test_programs_inside_the_contract_pass(program, elbo):
    assert trial(program, elbo, particles=3) == 1


def test_an_enumerated_discrete_latent_passes_with_traceenum():
    assert trial(Discrete("parallel"), "traceenum") == 1
    program = MixtureVAE(enumerate_y=True)
    labelled = ("labelled", torch.randn(3, 4, dtype=torch.float64), {"y": torch.tensor([0, 2, 1])})
    unlabelled = ("unlabelled", torch.randn(3, 4, dtype=torch.float64), {"y": None})
    assert check_program(program, Objective("traceenum"), [labelled, unlabelled]) == 1


def test_the_trial_draws_nothing_from_the_rng():
    discrete, extras = Discrete("parallel"), Extras()
    state = torch.get_rng_state()
    trial(discrete, "traceenum")
    trial(extras, "trace", particles=2)
    assert torch.equal(torch.get_rng_state(), state)


def test_an_annealed_beta_is_tried_too():
    """Model-enumerated sites need one common scale: β ≠ 1 on y but not on x breaks TraceEnum_ELBO, at the trial."""

    class ModelEnumerated(Base):
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
                y = pyro.sample("y", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
                pyro.sample("x", dist.Normal(self.dec(z) + y.unsqueeze(-1), 0.5).to_event(1), obs=x)

    check_program(ModelEnumerated(), Objective("traceenum"), [("", X, {})])
    with pytest.raises(UserError, match="with beta = 0.5"):
        check_program(ModelEnumerated(), Objective("traceenum"), [("", X, {})], beta=0.5)
