"""σ sets which directions a VAE keeps: the probabilistic-PCA prediction, measured."""

import numpy as np
import pytest
import torch

from ppl_vae.data.datasets import Dataset
from ppl_vae.diagnostics.estimators import active_units, importance_sample
from ppl_vae.inference.trainer import Trainer
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config

EIGENVALUES = np.array([3.0, 1.0, 0.4, 0.1, 0.01, 0.005])


def synthetic(n=3000, seed=0):
    """Gaussian data with the covariance eigenvalues above, in a random rotation."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    x = rng.normal(size=(n, 6)) * np.sqrt(EIGENVALUES) @ q.T
    x = torch.from_numpy(x.astype(np.float32))
    return Dataset("synthetic", x[: n - 500], x[n - 500 :], (6,))


def train_linear_vae(sigma2: float, epochs: int = 150):
    """Train the linear VAE with fixed σ² and return (measured, pPCA-predicted) active units."""
    data = synthetic()
    config = tiny_config(
        model={"network": "linear", "latent_dim": 5, "sigma": float(np.sqrt(sigma2))},
        train={"epochs": epochs, "batch_size": 100, "lr": 1e-2},
    )
    program = build_program(config, 6, (6,))
    Trainer(program, config, data.train, data.test, progress=False).fit()
    est = importance_sample(program.model, program.guide, data.test, k=1000)
    measured, _ = active_units(est.latent_mean)
    sample_eigenvalues = np.linalg.eigvalsh(np.cov(data.train.numpy().T))
    return measured, int((sample_eigenvalues > sigma2).sum())


@pytest.mark.parametrize("sigma2,expected", [(0.2, 3), (0.04, 4)])
def test_active_units_match_ppca_prediction_at_two_sigmas(sigma2, expected):
    measured, predicted = train_linear_vae(sigma2)
    assert predicted == expected
    assert measured == predicted


@pytest.mark.slow
@pytest.mark.parametrize("sigma2", [0.5, 0.2, 0.04, 0.007])
def test_active_units_follow_ppca_across_sigma_long(sigma2):
    """The long version: four σ values, twice the training; eigenvalues 3, 1, 0.4, 0.1, 0.01, 0.005."""
    measured, predicted = train_linear_vae(sigma2, epochs=300)
    assert measured == predicted
