"""A run: build a program from a config, fit it, load it, evaluate it, and report.

Layer 3 — may import: every layer below (``config``, ``storage``, ``data``, ``inference``,
``diagnostics``, ``plots``), ``ppl_vae.models`` and ``ppl_vae.guides``.
"""
