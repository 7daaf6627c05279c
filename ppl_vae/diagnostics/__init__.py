"""Estimators of a trained program: IWAE log p(x), PSIS k̂, gaps, SBC, identity, ArviZ export, held-out elpd.

Layer 2 — may import: numpy, scipy, torch, pyro, ``ppl_vae.inference``, ``ppl_vae.errors``;
ArviZ and scikit-learn lazily, inside the functions that need them. Functions return numbers
and result objects; nothing here writes files.
"""
