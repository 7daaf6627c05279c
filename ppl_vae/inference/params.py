r"""Module parameters without the global param store: how the bench answers ``pyro.module``.

A Pyro program registers its networks with ``pyro.module(name, net)`` (Pyro's idiom, as in
its ``examples/vae/vae.py``) or is a ``PyroModule``. Either way each parameter :math:`\theta_j`
of ``net`` becomes a statement ``pyro.param(f"{name}$$${path_j}", θ_j)``. Pyro's default answer
puts :math:`\theta_j` into the global param store and hands back the stored tensor;
``pyro.infer.SVI`` steps exactly the tensors that such statements hand back.

The bench steps the parameters of the program's modules directly (its optimizer holds
``program.parameters()``), so it runs every program under :class:`ModuleParams`, which answers
a ``param`` statement whose initial value is a module parameter with that very tensor. The
program computes with the same tensors as under SVI, the statement is still seen by every
handler around it (a trace records it, as Pyro's would, so ``SVI`` with a loss built on the
bench's estimators still finds the parameters), and nothing is written to the global store.
Both routes therefore train the same tensors; only SVI registers them by name.

A ``pyro.param`` whose value is not a parameter of the program's modules would not be trained
by the bench: :func:`foreign_params` names such sites so the trainer can refuse them before
any work.

One write no handler can answer: a ``PyroModule``'s constrained ``PyroParam`` puts its
unconstrained tensor (a module parameter) into the global store itself before its ``param``
statement reads it back; the bench trains that tensor like any other.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from torch import nn

__all__ = ["ModuleParams", "local_params", "foreign_params"]


class ModuleParams(Messenger):
    """Answer ``pyro.param(name, θ)`` with θ itself when θ is a module parameter; nothing is stored.

    A module parameter is an ``nn.Parameter`` (what ``pyro.module`` and ``PyroModule`` pass), or
    one of ``tensors``: the stand-ins that :func:`torch.func.functional_call` puts in a module's
    parameter slots while a step is recorded (:mod:`ppl_vae.inference.compiled`). Any other
    ``param`` statement passes on to the handlers outside, and so to Pyro's default.

    Example:
        >>> import pyro
        >>> net = nn.Linear(2, 1)
        >>> def model():
        ...     pyro.module("net", net)
        >>> pyro.clear_param_store()
        >>> tr = poutine.trace(ModuleParams()(model)).get_trace()
        >>> tr.nodes["net$$$weight"]["value"] is net.weight, len(pyro.get_param_store())
        (True, 0)
    """

    def __init__(self, tensors: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._ids = frozenset(id(t) for t in tensors)

    def _pyro_param(self, msg) -> None:
        args = msg["args"]
        if len(args) > 1 and isinstance(args[1], nn.Parameter):
            if getattr(args[1], "unconstrained", None) is None:
                # what the store attaches to the values it hands back (a module parameter is its own
                # unconstrained value): SVI around a bench function steps site["value"].unconstrained()
                args[1].unconstrained = weakref.ref(args[1])
            msg["value"] = args[1]
            msg["done"] = True
        elif len(args) > 1 and id(args[1]) in self._ids:
            msg["value"] = args[1]
            msg["done"] = True


def local_params(fn: Callable) -> Callable:
    """``fn`` run under a fresh :class:`ModuleParams`: how every part of the bench runs a program."""
    return ModuleParams()(fn)


class _NoInitialValue(Exception):
    pass


class _EveryParam(Messenger):
    """Answer ``param`` statements with their initial values, remembering each site's unconstrained tensor.

    A statement without an initial value reads the global store. A ``PyroParam`` of a ``PyroModule``
    does that (the module has just put its own unconstrained parameter there), so such a read goes on
    to Pyro's default; a read of a name the store does not hold stops the run.
    """

    def __init__(self):
        super().__init__()
        self.values: dict[str, torch.Tensor | None] = {}

    def _pyro_param(self, msg) -> None:
        args = msg["args"]
        value = args[1] if len(args) > 1 else None
        if callable(value) and not isinstance(value, torch.Tensor):  # pyro.param's lazy initial value
            value = value()
        if value is not None:
            msg["value"] = value
            msg["done"] = True
        elif msg["name"] not in pyro.get_param_store():
            self.values.setdefault(msg["name"], None)
            raise _NoInitialValue

    def _pyro_post_param(self, msg) -> None:
        value = msg["value"]
        unconstrained = getattr(value, "unconstrained", None)  # set on what the store hands back
        self.values.setdefault(msg["name"], unconstrained() if unconstrained is not None else value)


def foreign_params(model: Callable, guide: Callable, module: nn.Module, *args, **kwargs) -> list[str]:
    """Names of the ``pyro.param`` sites of the pair whose tensor is not a parameter of ``module``.

    Runs the guide and the model replayed against it once; every ``param`` statement with an initial
    value is answered with it, so nothing is written to the global store. The caller keeps the RNG
    untouched (:func:`~ppl_vae.inference.importance.rng_untouched`).
    """
    sites = _EveryParam()
    try:
        guide_trace = poutine.trace(sites(guide)).get_trace(*args, **kwargs)
        poutine.replay(sites(model), trace=guide_trace)(*args, **kwargs)
    except _NoInitialValue:
        pass
    own = {id(p) for p in module.parameters()}
    return [name for name, value in sites.values.items() if value is None or id(value) not in own]
