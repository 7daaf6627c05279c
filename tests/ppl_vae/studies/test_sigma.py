"""σ sets which directions a VAE keeps: the probabilistic-PCA prediction, measured."""

import pytest

from tests.ppl_vae.linear_gaussian import train_linear_vae


@pytest.mark.parametrize("sigma2,expected", [(0.2, 3), (0.04, 4)])
def test_active_units_match_ppca_prediction_at_two_sigmas(sigma2, expected):
    """Lucas et al. 2019: a linear VAE with fixed σ recovers pPCA; directions with eigenvalue <= σ² collapse."""
    measured, predicted = train_linear_vae(sigma2)
    assert predicted == expected
    assert measured == predicted


@pytest.mark.slow
@pytest.mark.parametrize("sigma2", [0.5, 0.2, 0.04, 0.007])
def test_active_units_follow_ppca_across_sigma_long(sigma2):
    """The long version: four σ values, twice the training; eigenvalues 3, 1, 0.4, 0.1, 0.01, 0.005."""
    measured, predicted = train_linear_vae(sigma2, epochs=300)
    assert measured == predicted
