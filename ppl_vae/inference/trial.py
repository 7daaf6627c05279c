"""Checking a program against :mod:`ppl_vae.contracts` before any work is done.

Every refusal is a :class:`~ppl_vae.errors.UserError` whose one line names the program, the
contract and what is missing, so a user sees it before a run directory exists.
"""

from __future__ import annotations

from torch import nn

from ..contracts import Guide, Model
from ..errors import UserError

__all__ = ["check_module"]


def check_module(module: object, role: str, where: str) -> nn.Module:
    """Return ``module`` if it is a ``torch.nn.Module`` satisfying the contract of ``role`` ("model" or "guide")."""
    contract = {"model": Model, "guide": Guide}[role]
    if not isinstance(module, nn.Module):
        raise UserError(f"{where} returned {type(module).__name__}, not a torch.nn.Module (ppl_vae.contracts.Program)")
    if not isinstance(module, contract):
        raise UserError(
            f"{where} does not satisfy ppl_vae.contracts.{contract.__name__}: it has no method {role}(x, **inputs)"
        )
    return module
