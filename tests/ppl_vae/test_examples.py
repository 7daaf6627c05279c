"""The example programs of "Your own programs" (README): fast runs on digits, the full MNIST runs marked slow."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import ppl_vae
from ppl_vae.config import EvalConfig
from ppl_vae.diagnostics.identity import train_classifier
from ppl_vae.runs.evaluation import evaluate
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
QUICK = EvalConfig(k=4, gap_points=0, sbc_simulations=0, idata_points=5, idata_draws=2)


def program(spec: str) -> str:
    return f"{ROOT}/examples/{spec}"


def test_m2_on_digits_learns_to_classify_from_300_labels(tmp_path):
    config = tiny_config(
        model={"program": program("ss_vae_m2.py:m2_small"), "latent_dim": 8},
        data={"labels": "300"},
        train={"epochs": 6, "elbo": "traceenum", "batch_size": 64},
    )
    run = ppl_vae.fit(config, tmp_path / "m2", progress=False)
    assert run.history[-1]["test_elbo"] > run.history[0]["test_elbo"] + 3
    summary = evaluate(run, QUICK, progress=False).summary
    assert summary.accuracy > 0.6, summary.accuracy  # chance: 0.1
    assert summary.log_px >= summary.elbo and summary.inputs == []


def _bernoulli_log_lik(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return -(torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none") * mask).sum(-1)


def test_quadrant_cvae_keeps_the_given_quadrant_and_reports_the_conditional_likelihood(tmp_path):
    runs = {}
    for name in ("cvae_small", "regressor_small"):
        config = tiny_config(
            model={"program": program(f"cvae_quadrants.py:{name}"), "latent_dim": 4}, train={"epochs": 3}
        )
        runs[name] = ppl_vae.fit(config, tmp_path / name, progress=False)
    x = runs["cvae_small"].dataset().test
    # the regressor has no latent: log p(x) is exactly log p(x_out | x_in), the masked cross-entropy
    regressor = runs["regressor_small"].program.model_module
    out = (~regressor.quadrants.given).float()
    with torch.no_grad():
        exact = _bernoulli_log_lik(regressor.net(regressor.quadrants.inputs(x)), x, out)
    summary = evaluate(runs["regressor_small"], QUICK, progress=False).summary
    assert summary.log_px == pytest.approx(float(exact.mean()), rel=1e-5)
    assert summary.elbo == pytest.approx(summary.log_px, rel=1e-6) and summary.kl == 0
    # the CVAE: decodings and samples keep the given quadrant; only the output pixels are predicted
    cvae = runs["cvae_small"]
    given = cvae.program.model_module.quadrants.given
    samples, decodings = cvae.sample(8, like=x[:8]), cvae.reconstruct(x[:8], 3)
    assert torch.equal(samples[:, given], x[:8, given]) and torch.equal(
        decodings[:, :, given], x[:8, given].expand(3, 8, -1)
    )
    assert not torch.equal(samples[:, ~given], x[:8, ~given])
    summary = evaluate(cvae, QUICK, progress=False).summary
    assert summary.log_px >= summary.elbo and np.isfinite(summary.log_px)


def test_class_conditional_samples_are_recognised_as_their_class(tmp_path):
    config = tiny_config(
        model={"program": program("conditional_vae.py:conditional_small"), "latent_dim": 4},
        data={"labels": "all"},
        train={"epochs": 10, "batch_size": 64},
    )
    run = ppl_vae.fit(config, tmp_path / "cond", progress=False)
    assert (tmp_path / "cond" / "figures" / "samples_by_class.png").is_file()
    assert "samples_by_class.png" in (tmp_path / "cond" / "report.md").read_text()
    data = run.dataset()
    classifier = train_classifier(data.train, data.train_labels)
    y = torch.arange(10).repeat_interleave(30)
    samples = run.sample(300, y=y)
    recognised = float((classifier.predict(samples.clamp(0, 1).numpy()) == y.numpy()).mean())
    assert recognised > 0.6, recognised  # chance: 0.1
    summary = evaluate(run, QUICK, progress=False).summary
    assert summary.inputs == ["y"] and summary.accuracy is None  # conditioned on y: log p(x, y), no classifier
    # the labels are an input of the recorded sampler: compiled, it weighs the same draws as eager
    compiled = evaluate(run, replace(QUICK, compile_sampler="on"), progress=False).summary
    assert compiled.sampler == "compiled importance sampler (--compile-sampler)"
    for key in ("log_px", "elbo", "kl", "distortion", "mse"):
        assert getattr(compiled, key) == pytest.approx(getattr(summary, key), rel=1e-5), key


# --- the full runs of the README (make m2, make cvae, make conditional), on MNIST ------------------------------------


@pytest.mark.slow
def test_m2_on_mnist_with_3000_labels(shared_data, tmp_path):
    config = tiny_config(
        model={"program": program("ss_vae_m2.py:m2"), "latent_dim": 50, "hidden_dim": 500},
        data={"name": "mnist", "root": str(shared_data / "mnist"), "labels": "3000"},
        train={"epochs": 10, "elbo": "traceenum", "batch_size": 200, "lr": 0.0004},
    )
    run = ppl_vae.fit(config, tmp_path / "m2", progress=False)
    summary = evaluate(run, EvalConfig(k=10, gap_points=0, sbc_simulations=0), progress=False).summary
    assert summary.accuracy > 0.9, summary.accuracy


@pytest.mark.slow
def test_quadrant_cvae_beats_the_regressor_on_mnist(shared_data, tmp_path):
    from ppl_vae.studies.compare import compare, variants_from

    base = tiny_config(data={"root": str(shared_data / "mnist")}, train={"epochs": 10})
    variants = variants_from(base, [str(ROOT / "examples" / "quadrants" / f) for f in ("cvae.toml", "regressor.toml")])
    for config in variants.values():
        config.train.epochs, config.model.program = 10, str(ROOT / config.model.program)
    table = compare(variants, tmp_path / "q", EvalConfig(k=20, gap_points=0, sbc_simulations=0), progress=False)
    rows = {r["variant"]: r for r in table.rows}
    assert rows["cvae"]["log_px"] > rows["regressor"]["log_px"] + 3 * rows["regressor"]["diff_se"]


@pytest.mark.slow
def test_class_conditional_samples_on_mnist(shared_data, tmp_path):
    config = tiny_config(
        model={"program": program("conditional_vae.py:conditional"), "latent_dim": 16},
        data={"name": "mnist", "root": str(shared_data / "mnist"), "labels": "all"},
        train={"epochs": 20},
    )
    run = ppl_vae.fit(config, tmp_path / "cond", progress=False)
    data = run.dataset()
    classifier = train_classifier(data.train[:10000], data.train_labels[:10000])
    y = torch.arange(10).repeat_interleave(50)
    recognised = float((classifier.predict(run.sample(500, y=y).clamp(0, 1).numpy()) == y.numpy()).mean())
    assert recognised > 0.8, recognised
