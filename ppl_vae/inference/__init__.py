"""Inference on programs through Pyro's effect handlers: log-weights, objectives, training.

Layer 1 — may import: torch, pyro, ``ppl_vae.errors``, ``ppl_vae.contracts``. A config section
is read through a Protocol (``TrainSettings``: what the trainer reads), never imported, so the
config layer can validate names against the registries defined here.
"""
