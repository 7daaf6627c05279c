r"""The held-out elpd of a run as ArviZ's ``ELPDData``, so ``arviz.compare`` ranks variants.

For a fitted decoder :math:`\hat\theta` and N test points, each point's local latent is
integrated out by importance sampling with the guide as proposal (IWAE-K, Burda et al. 2016,
arXiv:1509.00519), and the expected log predictive density on the held-out split is

.. math::

    \widehat{\mathrm{elpd}} = \sum_{i=1}^N \widehat{\log p}(x_i \mid \hat\theta), \qquad
    \mathrm{SE} = \sqrt{N \operatorname{Var}_i \widehat{\log p}(x_i)},

with ArviZ's variance convention (ddof 0, as ``az.loo``). For two variants on the same points,
:math:`d_i = \widehat{\log p}_{\text{best}}(x_i) - \widehat{\log p}_{v}(x_i)`, ``arviz.compare``
reports ``elpd_diff`` :math:`= \sum_i d_i` and ``dse`` :math:`= \sqrt{N \operatorname{Var}_i d_i}`;
per datapoint they are :math:`\Delta = \texttt{elpd\_diff}/N` and
:math:`\mathrm{SE}(\Delta) = \texttt{dse}/N = \mathrm{sd}_0(d)/\sqrt N` — the paired SE of
:func:`~ppl_vae.diagnostics.statistics.paired_difference` times :math:`\sqrt{(N-1)/N}`.

The points are held out, so no leave-one-out correction is made (``p_loo`` is NaN: not
defined). ArviZ's ``compare`` reads only ``elpd_loo``-named fields, hence the names; the values
are the held-out elpd. ``pareto_k`` holds each point's PSIS k̂ of its K importance weights
(Vehtari et al. 2024, arXiv:1507.02646) with ArviZ's threshold :math:`\min(1 - 1/\log_{10}K, 0.7)`,
so ``print(elpd)`` and ``az.plot_khat(elpd)`` say which estimates to distrust. Why ``az.loo`` on
the exported posterior draws is not this number: :mod:`ppl_vae.diagnostics.inference_data`.

Stacking weights (Yao et al. 2018, arXiv:1704.02030) maximise
:math:`\sum_i \log \sum_m w_m p_m(x_i)` over the simplex. Adding :math:`c_i` to every variant's
:math:`\log p_m(x_i)` adds :math:`\sum_i c_i` to the objective, so the weights are computed on
values shifted by the per-point maximum over variants, where ``exp`` neither overflows nor
underflows. On held-out points they are the best mixture *for these test points*: fitted on
the split they are judged on, so optimistic.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from ..errors import UserError

__all__ = ["heldout_elpd", "point_hashes", "check_comparable", "compare_elpd", "POINT_DIM"]

POINT_DIM = "test_point"  # the dim of loo_i and pareto_k; its coordinate ``point_hash`` names each point


def point_hashes(x) -> np.ndarray:
    """A 64-bit digest of each row of ``x`` ``(N, ...)``: the identity of each evaluated point.

    Rows are hashed as float64, so the same points stored as float32 or float64 agree.

    Example:
        >>> a = point_hashes(np.eye(3, dtype=np.float32))
        >>> bool((a == point_hashes(np.eye(3))).all()), len(set(a.tolist()))
        (True, 3)
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    rows = np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows],
        dtype=np.uint64,
    )


def heldout_elpd(log_px, *, k: int, khat=None, point_hash=None):
    """``arviz.ELPDData`` of the held-out elpd from per-point IWAE-K estimates ``log_px`` ``(N,)``.

    Args:
        log_px: :math:`\\widehat{\\log p}(x_i)` of each test point (``pointwise.npz``'s ``log_px``).
        k: importance samples per point (ArviZ's ``n_samples``).
        khat: PSIS k̂ of each point's K weights; sets ``pareto_k``, ``good_k`` and ``warning``.
        point_hash: :func:`point_hashes` of the points, the coordinate that lets
            :func:`check_comparable` refuse variants evaluated on other points.

    Example:
        >>> elpd = heldout_elpd(np.array([-1.0, -2.0, -3.0]), k=100)
        >>> float(elpd["elpd_loo"]), round(float(elpd["se"]), 6)  # se = sqrt(N * var), ddof 0
        (-6.0, 1.414214)
    """
    import xarray as xr
    from arviz import ELPDData

    values = np.asarray(log_px, dtype=np.float64).reshape(-1)
    n = len(values)
    if n == 0 or not np.all(np.isfinite(values)):
        raise UserError("the held-out elpd needs at least one test point and finite log p(x) values")
    coords = {POINT_DIM: np.arange(n)}
    if point_hash is not None:
        point_hash = np.asarray(point_hash, dtype=np.uint64).reshape(-1)
        if len(point_hash) != n:
            raise UserError(f"{len(point_hash)} point hashes for {n} log p(x) values")
        coords["point_hash"] = (POINT_DIM, point_hash)
    loo_i = xr.DataArray(values, dims=[POINT_DIM], coords=coords, name="loo_i")
    se = math.sqrt(n * np.var(values))  # ddof 0: ArviZ's loo and compare use it
    good_k = min(1 - 1 / np.log10(k), 0.7) if k > 1 else 0.0  # ArviZ's loo threshold for S draws
    entries = {
        "elpd_loo": float(values.sum()),
        "se": se,
        "p_loo": float("nan"),  # held-out points: no leave-one-out correction to count
        "n_samples": int(k),
        "n_data_points": n,
        "warning": False,
        "loo_i": loo_i,
    }
    if khat is not None:
        khat = np.asarray(khat, dtype=np.float64).reshape(-1)
        if len(khat) != n:
            raise UserError(f"{len(khat)} k̂ values for {n} log p(x) values")
        entries["pareto_k"] = xr.DataArray(khat, dims=[POINT_DIM], coords=coords, name="pareto_k")
        entries["warning"] = bool(np.any(khat > good_k))
    entries["scale"] = "log"
    entries["good_k"] = good_k
    return ELPDData(data=list(entries.values()), index=list(entries))


def check_comparable(elpds: dict) -> None:
    """Refuse, in one line, to compare held-out elpds of other test points (or order) or other K."""
    if not elpds:
        raise UserError("nothing to compare")
    names = list(elpds)
    first = elpds[names[0]]
    reference = _hashes(names[0], first)
    for name in names[1:]:
        elpd = elpds[name]
        if int(elpd["n_samples"]) != int(first["n_samples"]):
            raise UserError(
                f"{name!r} was evaluated with K={int(elpd['n_samples'])} and {names[0]!r} with "
                f"K={int(first['n_samples'])}; evaluate every run with the same --k"
            )
        hashes = _hashes(name, elpd)
        if len(hashes) != len(reference) or not np.array_equal(hashes, reference):
            where = (
                f"{len(hashes)} vs {len(reference)} points"
                if len(hashes) != len(reference)
                else f"first at point {int(np.argmax(hashes != reference))}"
            )
            raise UserError(
                f"{name!r} and {names[0]!r} were evaluated on different test points ({where}); "
                "evaluate every run on the same data, split and --points"
            )


def _hashes(name: str, elpd) -> np.ndarray:
    loo_i = elpd["loo_i"]
    if "point_hash" not in getattr(loo_i, "coords", {}):
        raise UserError(f"{name!r} does not say which test points it was evaluated on; make it with heldout_elpd")
    return np.asarray(loo_i.coords["point_hash"].values, dtype=np.uint64)


def compare_elpd(elpds: dict, stacking: bool = True):
    """``arviz.compare`` of held-out elpds on the same points, best first (a pandas ``DataFrame``).

    ``elpd_diff`` and ``dse`` are ArviZ's own (paired over points). ``weight`` is the stacking
    weight computed on the per-point-shifted values (see the module docstring) where
    ``stacking``, else NaN.
    """
    import arviz as az

    check_comparable(elpds)
    table = az.compare(elpds, method="pseudo-BMA")  # its rows never come back empty, unlike stacking's
    table["weight"] = np.nan
    if stacking and len(elpds) > 1:
        values = np.stack([np.asarray(e["loo_i"].values, dtype=np.float64) for e in elpds.values()])  # (M, N)
        shift = values.max(axis=0)  # (N,) stacking is invariant to it
        shifted = {name: heldout_elpd(v - shift, k=int(e["n_samples"])) for (name, e), v in zip(elpds.items(), values)}
        weights = az.compare(shifted, method="stacking")["weight"]
        table["weight"] = weights.reindex(table.index)
    elif stacking:
        table["weight"] = 1.0
    return table
