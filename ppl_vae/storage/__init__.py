"""Bytes on disk: atomic writes and pickle-free checkpoints.

Layer 1 — may import: the standard library, numpy, torch, safetensors, ``ppl_vae.errors``.
"""
