"""The pictures: each function returns its Figure for a notebook and writes a PNG only when given a path."""

import numpy as np
import torch
from matplotlib.figure import Figure

from ppl_vae.diagnostics.sbc import SBCResult
from ppl_vae.plots.diagnostics import khat_per_point, sbc_rank_ecdf
from ppl_vae.plots.figures import plot_history, plot_images, plot_reconstructions


def test_every_plot_returns_its_figure_and_writes_only_when_asked(tmp_path):
    history = [{"epoch": e, "test_elbo": -100.0 + e, "train_objective": -99.0 + e} for e in range(1, 4)]
    x = torch.rand(6, 64)
    sbc = SBCResult(ranks=np.random.default_rng(0).integers(0, 10, (40, 3)), num_draws=9, pvalues=np.ones(3))
    figures = {
        "elbo": lambda path: plot_history(history, path),
        "images": lambda path: plot_images(x, (8, 8), path, title="t"),
        "reconstructions": lambda path: plot_reconstructions(x, x[None].repeat(2, 1, 1), (8, 8), path),
        "khat": lambda path: khat_per_point(np.linspace(0, 1, 20), path),
        "sbc": lambda path: sbc_rank_ecdf(sbc, path),
    }
    for name, draw in figures.items():
        assert isinstance(draw(None), Figure), name
        assert list(tmp_path.iterdir()) == [], name  # no path, no file
        path = tmp_path / f"{name}.png"
        assert isinstance(draw(path), Figure)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        path.unlink()


def test_the_elbo_curve_is_scaled_to_the_epochs_after_the_first():
    """Epoch 1 at -400 nats must not flatten eighty epochs between -105 and -95."""
    values = [-400.0] + list(np.linspace(-105, -95, 80))
    history = [{"epoch": i + 1, "test_elbo": v, "train_objective": v + 1} for i, v in enumerate(values)]
    ax = plot_history(history).axes[0]
    low, high = ax.get_ylim()
    assert -110 < low < -104 and -95 < high < -90


def test_sbc_lines_are_labelled_with_their_coordinate_and_p_value():
    sbc = SBCResult(ranks=np.zeros((10, 2), dtype=int), num_draws=9, pvalues=np.array([0.5, 0.01]))
    labels = [t.get_text() for t in sbc_rank_ecdf(sbc).axes[0].get_legend().get_texts()]
    assert labels[1:] == ["z[0] (p = 0.5)", "z[1] (p = 0.01)"]


def test_an_image_grid_is_the_images_themselves_at_their_places_with_rows_named():
    from ppl_vae.plots.figures import image_grid, mosaic

    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 10  # one 2x3 image
    b = np.stack([a[0] + 0.05, a[0] + 0.1])  # two
    tiled = mosaic([a, b], gap=1)
    assert tiled.shape == (2 * 2 + 1, 2 * 3 + 1)
    np.testing.assert_array_equal(tiled[:2, :3], a[0])  # row 0, column 0
    np.testing.assert_array_equal(tiled[3:, 4:], b[1])  # row 1, column 1
    assert (tiled[:2, 3:] == 1).all() and (tiled[2] == 1).all()  # the missing cell and the gutter are white
    rgb = mosaic([np.zeros((3, 4, 4, 3), np.float32)], gap=2)
    assert rgb.shape == (4, 3 * 4 + 2 * 2, 3)

    rows = [torch.full((3, 64), 0.25), torch.full((2, 64), 0.75)]
    fig = image_grid(rows, (8, 8), row_labels=["x", "z1~q"], title="t")
    (ax,) = fig.axes
    (shown,) = ax.get_images()
    np.testing.assert_allclose(shown.get_array()[:8, :8], 0.25)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "z1~q"]
