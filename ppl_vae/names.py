"""The names each registry answers to, readable without importing torch.

The command line lists them in ``--help`` and the config checks names against them before any
heavy module is imported, so ``ppl-vae --help`` and a misspelt ``--guide`` answer at once. Each
tuple is the key order of its registry; ``tests/ppl_vae/test_config.py`` checks that every tuple
equals the keys of the dict it names, so a registry entry cannot be added without its name here.

Layer 0 — imports nothing.
"""

from __future__ import annotations

__all__ = ["REGISTRIES"]

REGISTRIES: dict[str, tuple[str, ...]] = {
    # registry (module:dict) -> its names
    "ppl_vae.data.datasets:DATASETS": ("digits", "mnist", "fashion-mnist", "frey", "caltech101"),
    "ppl_vae.models:LIKELIHOODS": (
        "normal",
        "normal-learned",
        "normal-pixel",
        "normal-hetero",
        "laplace",
        "studentt",
        "bernoulli",
        "continuous-bernoulli",
    ),
    "ppl_vae.models:PRIORS": ("standard", "mog", "vamp", "flow"),
    "ppl_vae.models:NETWORKS": ("mlp", "linear", "gated", "conv"),
    "ppl_vae.models:LAYERS": ("mlp", "gated"),
    "ppl_vae.models:PSEUDO_INPUTS": ("data", "hardtanh"),
    "ppl_vae.models:INITS": ("default", "he"),
    "ppl_vae.models:DECODER_PRIORS": ("none", "normal"),
    "ppl_vae.guides:GUIDES": ("diagonal", "lowrank", "iaf", "naf", "spline", "planar", "radial", "householder"),
    "ppl_vae.inference.objectives:ELBOS": ("trace", "meanfield", "traceenum", "iwae"),
    "ppl_vae.inference.optimizers:OPTIMIZERS": ("adam", "adamnormgrad"),
    "ppl_vae.inference.schedules:ANNEALING": ("none", "linear", "cyclical"),
    "ppl_vae.inference.schedules:LR_SCHEDULES": ("constant", "cosine"),
}


def names(registry: str) -> tuple[str, ...]:
    """The names of ``registry`` (its short name, e.g. ``"GUIDES"``)."""
    (key,) = [k for k in REGISTRIES if k.endswith(":" + registry)]
    return REGISTRIES[key]
