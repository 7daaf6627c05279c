"""Reading a run directory back: the program with its weights and buffers, its config and its numbers.

Readers take no lock and see one consistent checkpoint (:mod:`ppl_vae.storage.checkpoint`).
Every field is checked (:mod:`.schema`) before the program is built; nothing is unpickled.

Layer 3 — imports ``storage`` and the run's build, sources (the user's program files) and schema modules.
"""

from __future__ import annotations

from pathlib import Path

from ..contracts import DATA_PLATE
from ..errors import UserError
from ..storage.checkpoint import load_checkpoint, read_checkpoint
from .build import build_program
from .run import Run, resolve_device
from .schema import check_extra, config_of, read_metrics
from .sources import stored_sources, user_code_errors

__all__ = ["load"]


def load(run_dir: str | Path, device: str = "auto", trust_program: bool = False) -> Run:
    """Load a run directory: the program with its weights and buffers, and its numbers.

    The checkpoint's own ``state.json`` holds the config the weights were trained with, so a
    run directory is self-contained; nothing is unpickled. A run made from a user's program
    imports the run's stored copy of it only with ``trust_program=True`` (and only when its
    sha256 is the recorded one); a run of built-in programs imports nothing but ppl_vae.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    checkpoint = read_checkpoint(run_dir / "checkpoint")
    state = checkpoint[0]
    config = config_of(state, run_dir)
    extra = check_extra(state, run_dir)
    sources = stored_sources(run_dir, config, extra.get("programs"), trust_program)
    metrics = read_metrics(run_dir)
    dev = resolve_device(device)
    with user_code_errors(sources):
        program = build_program(
            config,
            extra["data_dim"],
            tuple(extra["image_shape"]),
            num_classes=extra.get("num_classes"),
            sources=sources,
        ).to(dev)
    load_checkpoint(run_dir / "checkpoint", program, device=str(dev), checkpoint=checkpoint)
    program.data_plate = extra.get("data_plate", DATA_PLATE)
    program.eval()
    return Run(
        run_dir,
        config,
        program,
        extra["data_dim"],
        tuple(extra["image_shape"]),
        metrics=metrics,
        history=extra["history"],
        checkpoint={"epoch": state["epoch"], "step": state["step"]},
        sources=sources,
        step_kind=extra.get("step_kind") or "",
        num_classes=extra.get("num_classes"),
    )
