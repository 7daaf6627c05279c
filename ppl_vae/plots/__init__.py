"""Pictures: each function draws one figure from numbers and writes it atomically as a PNG.

Layer 2 — may import: numpy, torch, matplotlib (lazily: importing a plot module does not
load pyplot or choose a backend), ``ppl_vae.storage``.
"""
