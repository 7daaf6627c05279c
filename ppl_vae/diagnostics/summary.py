"""The evaluation summary: the numbers of ``evaluation.json``, one typed field each.

:func:`~ppl_vae.diagnostics.estimators.summarize` makes one from the importance sampler's
estimates; :func:`~ppl_vae.runs.evaluation.evaluate` completes it (the sampler, the gaps, the
calibration, the verdicts); :mod:`~ppl_vae.diagnostics.verdicts`, the report, ``compare``,
``sigma-sweep`` and the CLI read its fields. All numbers are nats per datapoint unless a field
says otherwise; ``None`` is a number the evaluation skipped (``--gap-points 0``, ``--sbc-simulations 0``).

On disk it is a flat JSON table (:meth:`Summary.to_json`, :meth:`Summary.from_json`). A field made
with :func:`_when` is written only where it, or the field it goes with, has a value: an evaluation
without global latents has no ``global_draws`` key at all, not a ``null`` one. A reader fills the
fields an older ``evaluation.json`` lacks with their defaults and ignores fields it does not know
(a newer writer's additions, :mod:`ppl_vae.storage.schema`).

Layer 2 — imports only ``ppl_vae.errors``.

Example:
    >>> s = Summary(log_px=-93.1, log_px_se=0.4, elbo=-95.0, elbo_se=0.4, kl=20.0, distortion=75.0,
    ...             mse=0.01, active_units=8, latent_variance=[1.0] * 8, khat_mean=0.2, khat_max=0.6,
    ...             khat_frac_gt_0_7=0.0, khat_frac_0_5_to_0_7=0.01, k=1000, n_points=100)
    >>> table = s.to_json()
    >>> "accuracy" in table, table["sbc_pvalue"], Summary.from_json(table) == s
    (False, None, True)
"""

from __future__ import annotations

import types
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints

from ..errors import UserError

__all__ = ["Summary"]


def _holds(value: Any, kind: Any) -> bool:
    """Whether a value read from JSON is of the field type ``kind`` (``float`` takes an int, never a bool)."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is types.UnionType:
        return any(_holds(value, k) for k in args)
    if origin is list:
        return isinstance(value, list) and all(_holds(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_holds(k, args[0]) and _holds(v, args[1]) for k, v in value.items())
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _when(present_with: str = ""):
    """A field ``evaluation.json`` holds only when it (or the field ``present_with``) is not ``None``."""
    return field(default=None, metadata={"present_with": present_with})


@dataclass(frozen=True)
class Summary:
    """What an evaluation found, as ``evaluation.json`` holds it."""

    # IWAE-K log p(x), averaged over the test points, with its SE over points
    log_px: float
    log_px_se: float
    elbo: float
    elbo_se: float
    kl: float  # rate: KL(q(z|x) ‖ p(z))
    distortion: float  # E_q[−log p(x|z)]
    mse: float | None  # None: no observed site holds a real-valued x
    active_units: float  # a count (Burda et al. 2016); a mean over seeds in a comparison
    latent_variance: list[float]  # per latent unit: Var_x E_q[z_u]
    khat_mean: float
    khat_max: float
    khat_frac_gt_0_7: float  # share of the test points whose estimate is unreliable
    khat_frac_0_5_to_0_7: float  # share whose estimate is usable
    k: int  # importance samples per point
    n_points: int
    log_px_mc_se: float | None = None  # mean over points of each estimate's Monte Carlo SE; None: not finite
    log_px_mc_se_rms: float | None = None
    posterior_variance: list[float] = field(default_factory=list)  # per latent unit: E_x Var_q[z_u]
    distortion_by_site: dict[str, float] = field(default_factory=dict)  # per observed site
    mse_by_site: dict[str, float] = field(default_factory=dict)
    # with global latents θ: log p(x) is the posterior predictive over this many draws of q(θ)
    global_draws: int | None = _when()
    log_px_estimand: str | None = _when()
    log_px_mc_se_inner: float | None = _when("global_draws")  # the IWAE's part of log_px_mc_se
    log_px_mc_se_outer: float | None = _when("global_draws")  # the draws of θ's part
    global_sites: list[str] | None = _when()
    local_diagnostics: str | None = _when()  # what the gaps and the calibration hold θ at
    sampler: str = ""  # which importance sampler ran, and why
    inputs: list[str] = field(default_factory=list)  # the inputs besides x the program was given
    accuracy: float | None = _when()  # argmax q(y|x) against the test labels
    approximation_gap: float | None = None  # Cremer et al. 2018
    amortization_gap: float | None = None
    gap_points: int = 0
    gap_sites: dict[str, str] | None = _when()  # what the refined guide did with each latent site
    gaps_skipped: str | None = _when()
    sbc_pvalue: float | None = None  # Talts et al. 2018, Bonferroni over coordinates
    sbc_pvalues: list[float] = field(default_factory=list)
    sbc_skipped: str | None = _when()
    seconds: float = 0.0
    verdicts: dict[str, str] = field(default_factory=dict)  # {diagnostic: sentence}
    figures_absent: dict[str, str] | None = _when()  # {figure: why it was not drawn}
    versions: dict[str, str] | None = _when()  # {library: version} the numbers were computed with

    def to_json(self) -> dict[str, Any]:
        """The table ``evaluation.json`` holds (without its ``schema``, which the writer stamps)."""
        table = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if "present_with" in f.metadata and getattr(self, f.metadata["present_with"] or f.name) is None:
                continue
            table[f.name] = value
        return table

    @classmethod
    def from_json(cls, table: Any, where: str = "evaluation.json") -> Summary:
        """The summary a table read from ``where`` holds; :class:`~ppl_vae.errors.UserError` naming the
        first missing headline number, or a field not of its type, where it is not an evaluation's."""
        if not isinstance(table, dict):
            raise UserError(f"{where} must hold a table of numbers", "run `ppl-vae evaluate` again")
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = next((name for name in required if name not in table), None)
        if missing:
            raise UserError(f"{where} has no {missing!r}", "run `ppl-vae evaluate` again")
        kinds = get_type_hints(cls)
        for key in known & table.keys():
            if not _holds(table[key], kinds[key]):
                raise UserError(f"{where}: {key!r} is not a {kinds[key]}", "run `ppl-vae evaluate` again")
        return cls(**{key: value for key, value in table.items() if key in known})
