"""The pictures of a finished training: ``figures/*.png`` of a run directory.

``elbo.png`` (the learning curves), ``reconstructions.png`` (test rows x and decodings of
z ~ q(z|x) below each), ``samples.png`` (decodings of z ~ p(z)) and, for a program that takes
labels, ``samples_by_class.png`` (a row of decodings for each class y). A picture the program
cannot give (no observed site holds x) is not drawn; :func:`draw_figures` says why, for the report.

Layer 3 — imports ``plots`` and the :class:`~ppl_vae.runs.run.Run` it draws.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import Dataset
from ..plots.figures import image_grid, plot_history, plot_images, plot_reconstructions, save_figure
from .run import Run

__all__ = ["draw_figures", "first_rows"]

N_FIGURE = 10  # test images shown in reconstructions.png
K_FIGURE = 4  # decodings of z ~ q(z|x) shown below each
N_SAMPLES = 32  # decodings of z ~ p(z) shown in samples.png
SAMPLES_PER_CLASS = 8  # decodings of each class y in samples_by_class.png


def draw_figures(run: Run, data: Dataset, figures: Path, observed: list[str]) -> dict[str, str]:
    """Draw the run's figures into ``figures``; return ``{figure: why it is not drawn}`` for those left out.

    ``observed`` are the observed sites of a user's model (named in the reason), else empty.
    """
    plot_history(run.history, figures / "elbo.png")
    x = data.test[:N_FIGURE].to(run.device)
    labels = None if data.test_labels is None else data.test_labels[:N_SAMPLES]
    absent = {}  # figure -> why it is not drawn: the report says so
    no_images = (
        f"no observed site of the model holds x or some of its columns (observed sites: "
        f"{', '.join(observed) or 'none'})"
    )
    decodings = run.reconstruct(x, K_FIGURE, **first_rows(run.inputs(labels), N_FIGURE))
    if decodings is not None:
        plot_reconstructions(x, decodings, data.image_shape, figures / "reconstructions.png")
    else:
        absent["reconstructions.png"] = no_images
    samples = run.sample(N_SAMPLES, like=data.test[:N_SAMPLES], **run.inputs(labels))
    if samples is not None:
        plot_images(samples, data.image_shape, figures / "samples.png", title="Decodings of z ~ p(z)")
    else:
        absent["samples.png"] = no_images
    if run.program.takes("y") and run.num_classes:
        why = _samples_by_class(run, data.test[:SAMPLES_PER_CLASS], data.image_shape, figures / "samples_by_class.png")
        if why:
            absent["samples_by_class.png"] = why
    return absent


def first_rows(inputs: dict, n: int) -> dict:
    """``inputs`` of the first ``n`` rows: each tensor sliced, anything else (``y=None``) as it is."""
    return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _samples_by_class(run: Run, like: torch.Tensor, image_shape: tuple[int, ...], path: Path) -> str:
    """One row of decodings of z ~ p(z) for each class y = 0..C-1; where the program cannot, why not."""
    rows = []
    for c in range(run.num_classes):
        y = torch.full((SAMPLES_PER_CLASS,), c, dtype=torch.int64, device=run.device)
        try:
            rows.append(run.sample(SAMPLES_PER_CLASS, like=like, y=y))
        except Exception as err:  # noqa: BLE001 - a program trained without labels may not take a given y
            return f"the model given y = {c} raised {type(err).__name__}"
    if any(r is None for r in rows):
        return "no observed site of the model holds x or some of its columns"
    labels = [f"y={c}" for c in range(run.num_classes)]
    save_figure(image_grid([r.cpu() for r in rows], image_shape, labels, "x ~ p(x | y, z), z ~ p(z)"), path)
    return ""
