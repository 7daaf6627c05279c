"""Module parameters answered locally: the bench and pyro.infer.SVI train the same tensors, the store stays empty."""

import copy

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch import nn
from torch.distributions import constraints

from ppl_vae.errors import UserError
from ppl_vae.inference.importance import log_mean_exp, log_weights
from ppl_vae.inference.params import ModuleParams, foreign_params, local_params
from ppl_vae.inference.trainer import Trainer, epoch_permutation
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


def _store() -> dict:
    return dict(pyro.get_param_store().named_parameters())


def test_module_parameters_are_answered_with_themselves_and_nothing_is_stored():
    net = nn.Linear(3, 2)

    def model():
        pyro.module("net", net)
        pyro.param("free", torch.zeros(2))

    trace = poutine.trace(local_params(model)).get_trace()
    # the site is still seen by the handlers around it, with the module's own tensor as its value
    assert trace.nodes["net$$$weight"]["value"] is net.weight
    assert trace.nodes["net$$$bias"]["value"] is net.bias
    # a param statement that is not a module parameter goes on to Pyro's default: the global store
    assert set(_store()) == {"free"}


def test_stand_ins_of_a_recorded_step_are_answered_too():
    net = nn.Linear(3, 2)
    stand_in = net.weight.detach().clone().requires_grad_()  # what functional_call puts in the slot
    with ModuleParams([stand_in]), poutine.trace() as tracer:
        pyro.param("net$$$weight", stand_in)
    assert tracer.trace.nodes["net$$$weight"]["value"] is stand_in and not _store()


def test_svi_around_a_bench_estimator_steps_the_program():
    """The answered sites still reach SVI's parameter capture: a per-datapoint IWAE loss from the bench trains."""
    program = build_program(tiny_config(), 64, (8, 8))
    x = torch.rand(32, 64)

    def iwae(model, guide, x):
        return -log_mean_exp(log_weights(model, guide, x, num_particles=4).total, dim=0).sum()

    before = {name: p.detach().clone() for name, p in program.named_parameters()}
    svi = SVI(program.model, program.guide, pyro.optim.Adam({"lr": 1e-3}), loss=iwae)
    for _ in range(3):
        svi.step(x)
    assert [name for name, p in program.named_parameters() if torch.equal(p, before[name])] == []
    assert not _store()


class _Stray(nn.Module):
    """A program with a parameter the bench cannot train, of the kind chosen per test."""

    def __init__(self, kind: str):
        super().__init__()
        self.net = nn.Linear(3, 3)
        self.kind = kind

    def model(self, x):
        pyro.module("program", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.net(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("program", self)
        loc = self.net(x)
        if self.kind == "raw":
            loc = loc + pyro.param("shift", torch.zeros(3))
        elif self.kind == "outside":
            loc = loc + pyro.module("stray", _STRAY_NET)(x)
        elif self.kind == "lazy":
            loc = loc + pyro.param("shift", lambda: torch.zeros(3))
        elif self.kind == "read":
            loc = loc + pyro.param("shift")  # a read of the global store, no initial value
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


_STRAY_NET = nn.Linear(3, 3)  # a module no program holds: the bench never steps it


@pytest.mark.parametrize(
    "kind,names",
    [
        ("raw", ["shift"]),
        ("lazy", ["shift"]),
        ("read", ["shift"]),
        ("outside", ["stray$$$weight", "stray$$$bias"]),
        ("plain", []),
    ],
)
def test_foreign_params_names_what_the_modules_do_not_hold(kind, names):
    program = _Stray(kind)
    assert foreign_params(program.model, program.guide, program, torch.randn(4, 3)) == names
    assert not _store()  # the check answers every statement itself: nothing read from or written to the store


@pytest.mark.parametrize("kind,names", [("raw", "shift"), ("outside", "stray\\$\\$\\$weight, stray\\$\\$\\$bias")])
def test_the_trainer_refuses_a_param_it_would_not_train_in_one_line(kind, names):
    config = tiny_config()
    x = torch.randn(16, 3)
    with pytest.raises(UserError, match=f"pyro.param site\\(s\\) {names} are not parameters") as err:
        Trainer(_Stray(kind), config.train, x, x[:4], progress=False)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    assert not _store()


def test_the_trainer_accepts_a_program_registered_with_pyro_module():
    """The control of the refusals: the same program without the stray parameter trains, and the store stays empty."""
    config = tiny_config(train={"batch_size": 8})
    x = torch.randn(32, 3)
    program = _Stray("plain")
    before = [p.detach().clone() for p in program.parameters()]
    Trainer(program, config.train, x, x[:4], progress=False).run_epoch()
    assert all(not torch.equal(a, b) for a, b in zip(before, program.parameters()))
    assert not _store()


class _Constrained(PyroModule):
    """A PyroModule with a constrained PyroParam: its unconstrained tensor is a module parameter."""

    def __init__(self):
        super().__init__()
        self.net = PyroModule[nn.Linear](3, 3)
        self.scale = PyroParam(torch.ones(3), constraint=constraints.positive)

    @pyro_method
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.net(z), self.scale).to_event(1), obs=x)

    @pyro_method
    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.net(x), 1.0).to_event(1))


def test_a_pyro_module_with_a_constrained_param_trains():
    """A PyroParam reads its value back from the store, where the PyroModule put its own tensor: not foreign."""
    config = tiny_config(train={"batch_size": 8})
    x = torch.randn(32, 3)
    program = _Constrained()
    before = {name: p.detach().clone() for name, p in program.named_parameters()}
    assert foreign_params(program.model, program.guide, program, x[:2]) == []
    Trainer(program, config.train, x, x[:4], progress=False).run_epoch()
    assert [name for name, p in program.named_parameters() if torch.equal(p, before[name])] == []


@pytest.mark.parametrize(
    "model,guide",
    [
        pytest.param({}, {}, id="canonical"),
        pytest.param({"prior": "vamp"}, {}, id="vamp-shares-the-encoder"),
        pytest.param({"prior": "flow", "likelihood": "normal-learned"}, {"name": "iaf"}, id="flows-learned-sigma"),
    ],
)
def test_svi_and_the_trainer_step_the_same_parameters(digits, model, guide):
    """SVI + Trace_ELBO + pyro.optim.Adam and the bench's Trainer: same seed and minibatches, same parameters.

    Both see the same noise (same seed, the same draws in the same order) and the same loss scale
    N/B (``poutine.scale`` on the SVI side), so the gradients are bit for bit equal while the
    parameters are. They differ in Adam's arithmetic only: the Trainer steps every tensor in one
    fused kernel, pyro.optim keeps one ``torch.optim.Adam`` per tensor; both compute the same
    update with a different order of rounding, about 1e-16 of a step of at most lr = 1e-3 in
    float64. Over these few steps that stays far below ``TOL`` = 1e-10, while any real difference
    (a tensor not stepped, or the VampPrior's shared encoder stepped twice) moves a parameter by
    about lr: seven orders of magnitude above it.
    """
    TOL = 1e-10
    config = tiny_config(model={"latent_dim": 4, **model}, guide=guide, train={"batch_size": 48})
    x = digits.train[:200].double()  # 4 minibatches of 48 and one of 8: the scale N/B changes
    pyro.set_rng_seed(0)
    program = build_program(config, 64, (8, 8), init_data=x).double()
    twin = copy.deepcopy(program)  # deepcopy keeps the VampPrior's encoder shared with the guide
    start = [p.detach().clone() for p in program.parameters()]

    pyro.set_rng_seed(1)
    Trainer(program, config.train, x, x[:8], progress=False).run_epoch()

    svi = SVI(twin.model, twin.guide, pyro.optim.Adam({"lr": config.train.lr}), Trace_ELBO())
    pyro.set_rng_seed(1)
    for idx in epoch_permutation(len(x), config.train.seed, 0).split(config.train.batch_size):
        with poutine.scale(scale=len(x) / len(idx)):
            svi.step(x[idx])

    # SVI found every tensor of the program, each once, with one optimizer each
    assert {id(t) for t in _store().values()} == {id(p) for p in twin.parameters()}
    assert len(svi.optim.optim_objs) == len(start)
    for (name, p), q, p0 in zip(program.named_parameters(), twin.parameters(), start):
        assert (p - q).abs().max() <= TOL, name
        assert (p - p0).abs().max() > 1e4 * TOL, name  # both moved, by far more than they differ
