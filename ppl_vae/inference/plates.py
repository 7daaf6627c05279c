"""The data plate under the user's name: found by its size, then seen by the bench as ``"data"``.

The bench reads per-datapoint terms off the plate over the batch (:data:`~ppl_vae.contracts.DATA_PLATE`,
``"data"``). A program may call that plate anything — Pyro's scANVI example names it
``"batch"``. :func:`find_data_plate` finds it as the one plate whose size follows x's batch
dimension (the program is traced on two batch sizes), or takes the name given with
``--data-plate``; :class:`RenamePlate`, an effect handler around the program, then shows every
site's frame of that plate to the bench under the canonical name. The program itself is
unchanged: only the frames the bench's handlers see are renamed, so Pyro's own inference
(``pyro.infer.SVI``) runs the program as written, whatever its plate is called.

Layer 1 — may import: torch, pyro, :mod:`ppl_vae.contracts`, :mod:`ppl_vae.errors`.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..contracts import DATA_PLATE, rows_of
from ..errors import UserError

__all__ = ["RenamePlate", "find_data_plate", "plate_sizes"]


class RenamePlate(Messenger):
    """Show the frames of the plate ``name`` as frames of :data:`DATA_PLATE` to the handlers outside this one.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("batch", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> with pyro.poutine.trace() as tr, RenamePlate("batch"):
        ...     model(torch.zeros(3))
        >>> [f.name for f in tr.trace.nodes["z"]["cond_indep_stack"]]
        ['data']
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _process_message(self, msg):
        stack = msg.get("cond_indep_stack")
        if stack and any(f.name == self.name for f in stack):
            msg["cond_indep_stack"] = tuple(f._replace(name=DATA_PLATE) if f.name == self.name else f for f in stack)


def plate_sizes(*traces) -> dict[str, int | None]:
    """``{plate name: size}`` of the vectorized plates the sample sites of ``traces`` sit in."""
    sizes: dict[str, int | None] = {}
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    sizes.setdefault(frame.name, frame.size)
    return sizes


def find_data_plate(model: Callable, guide: Callable, x: torch.Tensor, named: str = "", **inputs) -> str:
    """The name of the programs' plate over the batch of ``x`` (two rows at least).

    ``named``: the name the user gave (``--data-plate``), checked to exist. Otherwise the pair is
    traced on two batch sizes (the first two rows, then three: one row again) and the data plate
    is the plate whose size is the batch's both times. :data:`DATA_PLATE` is taken where it is
    one of several such plates. A one-line :class:`UserError` says what to rename where there is
    no such plate, or several, or where the name ``"data"`` is held by another plate.
    Nothing is drawn from the RNG; no gradient is recorded.
    """
    sizes = []
    for index in (torch.tensor([0, 1]), torch.tensor([0, 1, 0])):
        rows, given = x[index.to(x.device)], rows_of(inputs, index.to(x.device))
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            guide_trace = poutine.trace(guide).get_trace(rows, **given)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(rows, **given)
        sizes.append((len(rows), plate_sizes(guide_trace, model_trace)))
    (b1, first), (b2, second) = sizes
    plates = sorted(set(first) | set(second))
    if named:
        if named not in plates:
            found = ", ".join(map(repr, plates)) or "none"
            raise UserError(f"--data-plate {named!r} names no plate of the programs (their plates: {found})")
        following = [named]
    else:
        following = [p for p in plates if first.get(p) == b1 and second.get(p) == b2]
        if not following and first.get(DATA_PLATE, 0) in (None, -1):  # pyro.plate("data") without a size
            following = [DATA_PLATE]
    if not following:
        found = ", ".join(f"{p!r} (size {first.get(p)})" for p in plates) or "none"
        raise UserError(
            f"no plate has the batch's size x.shape[0] (plates: {found}); "
            f"put every per-point sample site inside pyro.plate({DATA_PLATE!r}, x.shape[0])"
        )
    if len(following) > 1:
        if DATA_PLATE in following:
            return DATA_PLATE
        names = ", ".join(map(repr, following))
        raise UserError(
            f"the plates {names} all have the batch's size; rename the one over the batch to "
            f"{DATA_PLATE!r} or name it with --data-plate NAME"
        )
    plate = following[0]
    if plate != DATA_PLATE and DATA_PLATE in plates:
        raise UserError(
            f"the plate over the batch is {plate!r} and another plate is named {DATA_PLATE!r}; rename that "
            f"one (the bench reads the batch's plate as {DATA_PLATE!r})"
        )
    return plate
