"""A run from Pyro: its programs under Predictive and SVI, saved with the project's checkpoints, store left alone."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

import ppl_vae
from ppl_vae.config import EvalConfig
from ppl_vae.runs.build import build_program
from ppl_vae.storage.checkpoint import read_state, save_checkpoint
from tests.conftest import tiny_config

SMALL_WORKFLOW = EvalConfig(
    k=16, points=40, gap_points=4, gap_steps=2, sbc_simulations=20, sbc_draws=9, idata_points=8, idata_draws=4
)


def _store_names() -> list[str]:
    return list(pyro.get_param_store().keys())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An IAF guide (permutation buffers) over the fixed-σ Normal model."""
    out = tmp_path_factory.mktemp("from_pyro") / "run"
    ppl_vae.fit(tiny_config(model={"latent_dim": 4}, guide={"name": "iaf"}, train={"epochs": 3}), out, progress=False)
    return out


def test_the_bench_leaves_the_global_param_store_empty(tmp_path, digits):
    """fit, load and the whole evaluation answer pyro.module locally, the VampPrior's shared encoder included."""
    config = tiny_config(model={"prior": "vamp", "latent_dim": 4}, train={"epochs": 1})
    ppl_vae.fit(config, tmp_path / "run", progress=False)
    assert _store_names() == []
    run = ppl_vae.load(tmp_path / "run")
    ppl_vae.evaluate_run(run, SMALL_WORKFLOW, progress=False)
    run.sample(4), run.reconstruct(digits.test[:4])
    assert _store_names() == []
    # the control: the same programs run as plain Pyro register with the store
    poutine.trace(run.program.guide).get_trace(digits.test[:4])
    assert _store_names() and all(name.startswith("guide$$$") for name in _store_names())


def test_predictive_on_a_loaded_run_draws_the_posterior_predictive(run_dir, digits):
    """z ~ q(z|x) and x' ~ N(f(z), σ²): the draws spread around the decodings by σ, pixel by pixel."""
    run = ppl_vae.load(run_dir)
    x, S = digits.test[:20], 200
    # Predictive hands back an observed site as the data the model was called with ...
    kept = Predictive(run.program.model, guide=run.program.guide, num_samples=3)(x)
    assert torch.equal(kept["x"], x.expand(3, *x.shape))
    # ... so, as with any Pyro model called with data, uncondition it to draw x' ~ p(x | z)
    draws = Predictive(poutine.uncondition(run.program.model), guide=run.program.guide, num_samples=S)(x)
    z, x_rep = draws["z"], draws["x"]
    assert z.shape == (S, 20, 4) and x_rep.shape == (S, 20, 64)

    sigma = run.config.model.sigma
    with torch.no_grad():
        residual = x_rep - run.program.model_module.decoder(z)  # x' - f(z) ~ N(0, σ²) independently
    per_pixel = residual.reshape(-1, residual.shape[-1])  # (S·B, D)
    n = per_pixel.shape[0]
    assert (per_pixel.mean(0).abs() < 5 * sigma / n**0.5).all()
    assert ((per_pixel.std(0) / sigma - 1).abs() < 5 / (2 * n) ** 0.5).all()  # SE of a sample sd: σ/√(2n)

    # the z draws are the guide's: E_q[z | x] from Predictive agrees with draws from the encoder's q(z | x)
    with torch.no_grad():
        direct = run.program.guide_module.encoder(x).sample((S,))  # (S, 20, 4)
    se = ((z.var(0) + direct.var(0)) / S).sqrt()
    assert ((z.mean(0) - direct.mean(0)).abs() < 5 * se).all()


def test_fine_tune_a_loaded_run_with_svi_and_save_a_checkpoint(run_dir, tmp_path, digits):
    """The README's notebook: load, SVI steps on module parameters, save with safetensors, load it back exactly."""
    run = ppl_vae.load(run_dir)
    before = {name: p.detach().clone() for name, p in run.program.named_parameters()}
    x = digits.train[:256]
    svi = SVI(run.program.model, run.program.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for xb in x.split(64):
        with poutine.scale(scale=len(x) / len(xb)):  # a minibatch stands for the data set, as in the bench
            svi.step(xb)
    assert [name for name, p in run.program.named_parameters() if torch.equal(p, before[name])] == []
    # the param store has the parameters but not the buffers an IAF needs (its permutations) ...
    permutations = [name for name, _ in run.program.named_buffers() if name.endswith("permutation")]
    assert permutations and not any("permutation" in name for name in _store_names())

    # ... the project's checkpoint has both
    state = read_state(run_dir / "checkpoint")
    save_checkpoint(
        tmp_path / "tuned" / "checkpoint",
        run.program,
        None,
        epoch=state["epoch"],
        step=state["step"],
        config=state["config"],
        extra=state["extra"],
    )
    pyro.set_rng_seed(123)  # a program built with other permutations: loading must overwrite them
    fresh = build_program(run.config, run.data_dim, run.image_shape).state_dict()
    assert any(not torch.equal(fresh[name], run.program.state_dict()[name]) for name in permutations)
    pyro.set_rng_seed(123)
    tuned = ppl_vae.load(tmp_path / "tuned")
    saved = tuned.program.state_dict()
    for name, tensor in run.program.state_dict().items():
        assert torch.equal(saved[name], tensor), name
