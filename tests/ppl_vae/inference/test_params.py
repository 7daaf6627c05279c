"""Module parameters answered locally: the bench and pyro.infer.SVI train the same tensors, the store stays empty."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from ppl_vae.errors import UserError
from ppl_vae.inference.params import ModuleParams, foreign_params, local_params
from ppl_vae.inference.trainer import Trainer
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
        Trainer(_Stray(kind), config, x, x[:4], progress=False)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    assert not _store()


def test_the_trainer_accepts_a_program_registered_with_pyro_module():
    """The control of the refusals: the same program without the stray parameter trains, and the store stays empty."""
    config = tiny_config(train={"batch_size": 8})
    x = torch.randn(32, 3)
    program = _Stray("plain")
    before = [p.detach().clone() for p in program.parameters()]
    Trainer(program, config, x, x[:4], progress=False).run_epoch()
    assert all(not torch.equal(a, b) for a, b in zip(before, program.parameters()))
    assert not _store()
