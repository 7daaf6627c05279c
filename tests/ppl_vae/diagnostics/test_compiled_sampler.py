"""The compiled importance sampler: the eager sampler's numbers from the same draws, chosen by a count of chunks."""

import json

import pyro
import pytest
import torch

from ppl_vae.diagnostics.estimators import importance_sample
from ppl_vae.errors import UserError
from ppl_vae.inference import compiled
from tests.ppl_vae.linear_gaussian import PosteriorGuide, make
from tests.ppl_vae.mixtures import MixtureGuide, MixturePPCA
from tests.ppl_vae.unrecordable import Branching, ReadsBack

FIELDS = ("log_w", "log_px", "elbo", "kl", "distortion", "mse", "latent_mean", "latent_var")


def _sample(model, guide, x, mode, says=None, **kw):
    pyro.set_rng_seed(3)
    return importance_sample(
        model, guide, x, k=50, rows=200, compile=mode, say=None if says is None else says.append, **kw
    )


def _agree(a, b):
    for name in FIELDS:
        want, got = getattr(a, name), getattr(b, name)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9), name


@pytest.mark.parametrize("program", ["ppca", "mixture"])
def test_the_compiled_sampler_draws_and_weighs_what_the_eager_one_does(program):
    """Same seed: every per-point estimate equal to the eager sampler's, over many chunks (float64)."""
    if program == "ppca":  # the exact posterior (pPCA): log p(x) itself, and a Gaussian guide's means
        ppca = make()
        model, guide, x = ppca.model, PosteriorGuide(ppca, width=1.3).guide, ppca.sample(40)
        exact = ppca.log_px(x)
    else:  # y enumerated in the guide: summed out inside every chunk
        mixture = MixturePPCA()
        model, guide = mixture.model, MixtureGuide(mixture, width=1.2).guide
        x = mixture.sample(40, torch.Generator().manual_seed(1))[0]
        exact = mixture.log_px(x)
    says = []
    eager = _sample(model, guide, x, "off")
    fast = _sample(model, guide, x, "on", says)
    assert says == ["compiled importance sampler (--compile-sampler)"]
    _agree(eager, fast)
    # and the numbers are right, not only equal: IWAE-50 is log p(x) to within its own Monte Carlo error
    assert ((fast.log_px - exact).abs() < 5 * fast.log_px_mc_se + 1e-3).all()
    assert 0 < fast.log_px_mc_se.mean() < 0.2  # a guide 1.2-1.3× too wide: the weights do vary
    # the ragged last chunk (40 points = 4 chunks of 4 + ...) ran eagerly, the rest compiled: nothing left unfilled
    assert torch.isfinite(fast.log_w).all()


def test_an_unrecordable_program_is_refused_on_and_falls_back_on_auto(monkeypatch):
    program, x = Branching(), torch.randn(40, 3, dtype=torch.float64)
    with pytest.raises(UserError, match="--compile-sampler cannot record this program") as refused:
        _sample(program.model, program.guide, x, "on")
    line = Branching.guide.__code__.co_firstlineno + 1  # the line that reads x back: `if x.sum() > 0`
    assert f"at unrecordable.py:{line}, in guide;" in str(refused.value), refused.value
    monkeypatch.setattr(compiled, "SAMPLER_CHUNKS", 1)  # so that auto tries to compile it
    says = []
    eager = _sample(program.model, program.guide, x, "off")
    fallback = _sample(program.model, program.guide, x, "auto", says)
    assert len(says) == 1 and says[0].startswith("eager importance sampler: --compile-sampler cannot record")
    _agree(eager, fallback)


def test_auto_compiles_from_a_count_of_chunks_never_from_a_timing():
    from ppl_vae.inference.compiled import SAMPLER_CHUNKS, compiles_sampler

    assert SAMPLER_CHUNKS == 1_000  # the constant BENCHMARKS.md gives its reason for
    assert not compiles_sampler(123)[0]  # 10,000 MNIST test points at K = 100
    assert compiles_sampler(1_221)[0]  # ... at K = 1000
    ppca = make()
    says = []
    _sample(ppca.model, PosteriorGuide(ppca).guide, ppca.sample(40), "auto", says)  # 40 points × 50 draws: 10 chunks
    assert says == ["eager importance sampler: 10 chunks (--compile-sampler auto: compiled from 1000)"]


def test_auto_takes_the_same_path_however_slow_a_chunk_is(monkeypatch):
    """The same evaluation compiles (or not) whether a chunk takes microseconds or 20 ms longer, and says the same."""
    import time

    ppca = make()
    x = ppca.sample(40)
    guide = PosteriorGuide(ppca, width=1.3).guide

    def slow_model(x):
        time.sleep(0.02)
        return ppca.model(x)

    for threshold in (10, 11):  # auto compiles these 10 chunks; and not
        monkeypatch.setattr(compiled, "SAMPLER_CHUNKS", threshold)
        said = {}
        for name, model in (("fast", ppca.model), ("slow", slow_model)):
            said[name] = []
            _sample(model, guide, x, "auto", said[name])
        assert said["fast"] == said["slow"] and len(said["fast"]) == 1, said
        assert said["fast"][0].startswith("compiled" if threshold == 10 else "eager"), said


def test_evaluate_says_which_sampler_ran_and_records_it(tmp_path, capsys):
    from ppl_vae.cli import main

    run = tmp_path / "r"
    assert main(["fit", "--out", str(run), "--epochs", "1", "--hidden-dim", "16", "--no-progress"]) == 0
    fast = ["--k", "20", "--points", "40", "--gap-points", "0", "--sbc-simulations", "0"]
    capsys.readouterr()
    assert main(["evaluate", str(run), *fast]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ppl-vae: ")]
    assert len(said) == 1 and said[0].startswith("ppl-vae: eager importance sampler: "), said
    summary = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert summary["sampler"] == said[0][len("ppl-vae: ") :]
    assert main(["evaluate", str(run), *fast, "--no-compile-sampler"]) == 0
    summary = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert summary["sampler"] == "eager importance sampler (--no-compile-sampler)"


def test_a_program_that_reads_values_back_as_numbers_is_caught_on_a_chunk_it_was_not_recorded_on(monkeypatch):
    """`.tolist()` records (the value becomes a constant): the check on a second chunk refuses or drops it."""
    program = ReadsBack()
    x = torch.rand(40, 3) + torch.arange(40.0)[:, None] / 10  # every chunk has its own mean
    with pytest.raises(UserError, match="read tensor values back as numbers"):
        _sample(program.model, program.guide, x, "on")
    monkeypatch.setattr(compiled, "SAMPLER_CHUNKS", 1)  # so that auto compiles it
    says = []
    eager = _sample(program.model, program.guide, x, "off")
    fallback = _sample(program.model, program.guide, x, "auto", says)
    assert says[0].startswith("compiled importance sampler") and says[-1].startswith("eager importance sampler: ")
    assert "(fallback)" in says[-1]
    _agree(eager, fallback)  # the recording was never used: the eager numbers
