"""Studies of many runs: comparisons of variants and the σ sweep, on one shared runner.

Layer 4 — may import: ``ppl_vae.runs`` and everything below it.
"""
