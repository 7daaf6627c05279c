"""Every likelihood, guide and prior trains through the same bench with a finite, improving ELBO."""

import math

import pyro
import pytest

import ppl_vae
from ppl_vae.guides import GUIDES
from ppl_vae.inference.trainer import Trainer, elbo_per_datapoint
from ppl_vae.models import LIKELIHOODS, PRIORS
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config

CASES = (
    [("likelihood", name, {"model": {"likelihood": name}}) for name in LIKELIHOODS]
    + [("guide", name, {"guide": {"name": name}}) for name in GUIDES if name != "diagonal"]
    + [("prior", name, {"model": {"prior": name}}) for name in PRIORS if name != "standard"]
)


@pytest.mark.parametrize("room,name,overrides", CASES, ids=[f"{r}-{n}" for r, n, _ in CASES])
def test_variant_trains_with_improving_elbo(room, name, overrides, digits):
    sections = {"train": {"epochs": 8, "batch_size": 64, "lr": 3e-3}, "model": {"hidden_dim": 64}}
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    config = tiny_config(**sections)
    program = build_program(config, digits.data_dim, digits.image_shape, init_data=digits.train)
    before = elbo_per_datapoint(program, digits.test).mean().item()
    trainer = Trainer(program, config.train, digits.train, digits.test, progress=False)
    history = trainer.fit()  # 8 epochs x 23 steps = 184 steps
    after = history[-1]["test_elbo"]
    assert all(math.isfinite(row["train_objective"]) and math.isfinite(row["test_elbo"]) for row in history)
    assert after - before > max(5.0, 0.2 * abs(before)), (before, after)
    assert history[-1]["train_objective"] > history[0]["train_objective"]


def test_user_program_trains_saves_reloads_and_samples(tmp_path):
    """The hierarchical example goes through the CLI like any built-in program."""
    from pathlib import Path

    from ppl_vae.cli import main

    spec = str(Path(__file__).resolve().parents[3] / "examples" / "hierarchical_vae.py") + ":hierarchical"
    out = tmp_path / "hvae"
    assert main(["fit", "--model", spec, "--out", str(out), "--epochs", "6", "--no-progress"]) == 0
    with pytest.raises(ppl_vae.UserError, match="--trust-program"):
        ppl_vae.load(out)  # the run holds code: it is imported only when the caller trusts it
    run = ppl_vae.load(out, trust_program=True)
    history = run.history
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    x = run.dataset().test[:8]
    assert run.reconstruct(x, num_particles=2).shape == (2, 8, 64)
    assert {"z1", "z2"} <= set(pyro.poutine.trace(run.program.guide).get_trace(x).nodes)
    assert main(["sample", str(out), "--n", "9", "--out", str(tmp_path / "s.png"), "--trust-program"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
